"""Watches the interfaces the node depends on, through rtnetlink link events.

A link counts as up when it is administratively up and has carrier (IFF_LOWER_UP):
a veth whose peer went down, or a NIC with its cable pulled, is down for us. The
socket is read on the event loop; pyroute2 decodes the messages. If the kernel
drops events (ENOBUFS) the monitor re-reads every link, since a lost event can
hide a transition.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable
from concurrent.futures import Executor

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from agent.core.links import ADMIN_DOWN, MISSING, NO_CARRIER, REMOVED, UP

RTMGRP_LINK = 0x1
RTM_NEWLINK, RTM_DELLINK = 16, 17
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000

# (name, up, reason)
LinkCallback = Callable[[str, bool, str], None]


def _describe(flags: int) -> tuple[bool, str]:
    if not flags & IFF_UP:
        return False, ADMIN_DOWN
    if not flags & IFF_LOWER_UP:
        return False, NO_CARRIER
    return True, UP


def read_links(names: Iterable[str]) -> dict[str, tuple[bool, str]]:
    """Current state of each named link; blocking (one dump), call off the loop if it matters."""
    wanted = set(names)
    found: dict[str, tuple[bool, str]] = {}
    with IPRoute() as ipr:
        for msg in ipr.get_links():
            name = msg.get("IFLA_IFNAME")
            if name in wanted:
                found[name] = _describe(msg["flags"])
    for name in wanted - found.keys():
        found[name] = (False, MISSING)
    return found


class LinkMonitor:
    """Calls back when a watched link's state or the reason for it changes.

    The reason matters on its own: a heartbeat link that goes from
    "administratively down" to "no carrier" stays down, but stops being a fault
    of this node.
    """

    # Datagrams read per wake-up: a storm of link events elsewhere on the host
    # must not keep the loop (and the adverts) waiting.
    MAX_BATCH = 32

    def __init__(self, loop: asyncio.AbstractEventLoop, names: Iterable[str], callback: LinkCallback,
                 executor: Executor) -> None:
        self._loop = loop
        self._names = set(names)
        self._callback = callback
        self._executor = executor
        self._marshal = MarshalRtnl()
        self._state: dict[str, tuple[bool, str]] = {}
        self._resyncing = False
        self.resyncs = 0
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, 0)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.bind((0, RTMGRP_LINK))

    def start(self, initial: dict[str, tuple[bool, str]]) -> None:
        self._state = dict(initial)
        self._loop.add_reader(self._sock.fileno(), self._on_readable)

    def describe(self, name: str) -> str:
        """The kernel's view of a watched link: "up", "no carrier", "administratively down", ..."""
        return self._state.get(name, (False, "unknown"))[1]

    def close(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    def _update(self, name: str, up: bool, reason: str) -> None:
        if name not in self._names or self._state.get(name) == (up, reason):
            return
        self._state[name] = (up, reason)
        self._callback(name, up, reason)

    def _resync(self) -> None:
        """Events were lost (ENOBUFS): re-read every watched link, off the loop."""
        if self._resyncing:
            return
        self._resyncing = True
        self.resyncs += 1
        future = self._loop.run_in_executor(self._executor, read_links, self._names)
        future.add_done_callback(self._resynced)

    def _resynced(self, future: asyncio.Future) -> None:
        self._resyncing = False
        if future.cancelled() or future.exception() is not None:
            return
        for name, (up, reason) in future.result().items():
            self._update(name, up, reason)

    def _on_readable(self) -> None:
        for _ in range(self.MAX_BATCH):
            try:
                data = self._sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._resync()
                continue
            for msg in self._marshal.parse(data):
                name = msg.get("IFLA_IFNAME")
                if msg["header"]["type"] == RTM_DELLINK:
                    self._update(name, False, REMOVED)
                elif msg["header"]["type"] == RTM_NEWLINK:
                    self._update(name, *_describe(msg["flags"]))
