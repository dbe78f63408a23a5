"""One UDP socket per heartbeat link, pinned to its interface.

Each link is either a multicast group (like VRRP's 224.0.0.18, but our own group and
port) or a list of unicast peers. Sockets are bound to their device so that a frame
is attributed to the link it really came in on: that is what lets the core see that
one of two links is dead without failing over.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from agent.config import HeartbeatLink

# Frames are 64 bytes; anything bigger is read whole so the core can count it as "long".
_MAX_DATAGRAM = 2048
# Datagrams read per wake-up: a flood must not keep the loop from sending our own adverts.
_MAX_BATCH = 64

Receiver = Callable[[bytes, str], None]


def _open_socket(link: HeartbeatLink) -> socket.socket:
    v6 = isinstance(link.group, IPv6Address) or any(isinstance(p, IPv6Address) for p in link.peers)
    family = socket.AF_INET6 if v6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, link.interface.encode())
        # Heartbeats must win against bulk traffic on a shared link: TOS/class "network control".
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xC0)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, 0xC0)
        if link.group is None:
            sock.bind(("::" if v6 else "0.0.0.0", link.port))
            return sock
        index = socket.if_nametoindex(link.interface)
        if v6:
            sock.bind(("::", link.port))
            mreq = link.group.packed + struct.pack("@I", index)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        else:
            sock.bind((str(link.group), link.port))
            mreqn = link.group.packed + b"\0\0\0\0" + struct.pack("@i", index)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        return sock
    except OSError:
        sock.close()
        raise


class HeartbeatPort:
    """A heartbeat link: opened while its interface is usable, reopened when it comes back."""

    def __init__(self, link: HeartbeatLink, loop: asyncio.AbstractEventLoop, receiver: Receiver) -> None:
        self.link = link
        self.name = link.interface
        self._loop = loop
        self._receiver = receiver
        self._sock: socket.socket | None = None
        self._targets: list[tuple[str, int]] = (
            [(str(link.group), link.port)] if link.group is not None
            else [(str(p), link.port) for p in link.peers]
        )
        self.send_errors = 0
        self.last_error = ""

    @property
    def is_open(self) -> bool:
        return self._sock is not None

    def open(self) -> bool:
        if self._sock is not None:
            return True
        try:
            self._sock = _open_socket(self.link)
        except OSError as exc:
            self.last_error = f"open: {exc.strerror or exc}"
            return False
        self._loop.add_reader(self._sock.fileno(), self._on_readable)
        return True

    def close(self) -> None:
        if self._sock is None:
            return
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None

    def send(self, data: bytes) -> None:
        # A closed port is a link that is down here; the link monitor reopens it.
        if self._sock is None:
            return
        for target in self._targets:
            try:
                self._sock.sendto(data, target)
            except OSError as exc:
                self.send_errors += 1
                self.last_error = f"send: {exc.strerror or exc}"

    def _on_readable(self) -> None:
        sock = self._sock
        # Drain what is queued, so that after a stall older adverts do not lag behind, but in
        # batches: the reader stays ready, and timers due meanwhile run between two batches.
        for _ in range(_MAX_BATCH):
            if sock is not self._sock:
                return
            try:
                data = sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.last_error = f"recv: {exc.strerror or exc}"
                return
            self._receiver(data, self.name)
