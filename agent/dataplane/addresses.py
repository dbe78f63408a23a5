"""Makes a block's addresses local to this node, and removes exactly those again.

IPv4 needs no per-address state: each prefix, and each loose address as a /32, is
one AnyIP route (`local P dev lo table local`); the kernel then accepts traffic for
and answers ARP for every address in it. IPv6 neighbour discovery answers only for
addresses configured on an interface, so IPv6 members become interface addresses
(without DAD). Everything dpagent adds carries the protocol mark DPAGENT_PROTO
(RTPROT / IFA_PROTO), which is how leftovers of a crashed agent are found and how
a delete can never remove a route someone else installed.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from ipaddress import ip_address, ip_network

from pyroute2 import IPRoute

from agent.config import Block
from agent.core.reload import KernelAddresses, address_delta, kernel_addresses
from agent.dataplane import nlbatch
from agent.dataplane.step import StepResult

# 199 is unassigned in /etc/iproute2/rt_protos; `ip route show proto 199` lists ours.
DPAGENT_PROTO = 199


class AddressPlane:
    """Blocking netlink work, for one worker thread."""

    def __init__(self) -> None:
        self._ipr = IPRoute()
        self._batch = nlbatch.Batcher()

    def close(self) -> None:
        self._batch.close()
        self._ipr.close()

    @staticmethod
    def interface_index(name: str) -> int | None:
        """One ioctl; a pyroute2 link dump here cost ~1 ms of every takeover."""
        try:
            return socket.if_nametoindex(name)
        except OSError:
            return None

    def take(self, block: Block, stop: Callable[[], bool] | None = None) -> StepResult:
        return self.change(block.address_interface, kernel_addresses(block.prefixes, block.addresses), add=True,
                           stop=stop)

    def release(self, block: Block) -> StepResult:
        return self.change(block.address_interface, kernel_addresses(block.prefixes, block.addresses), add=False)

    def change(self, interface: str, members: KernelAddresses, *, add: bool,
               stop: Callable[[], bool] | None = None) -> StepResult:
        """Add or remove these members; `stop` cuts an add short between two sendmsgs
        (what was added stays held, and the release that follows removes it)."""
        started = time.perf_counter()
        result = StepResult()
        lo = self.interface_index("lo")
        if members.v4_routes and lo is not None:
            kind = nlbatch.RTM_NEWROUTE if add else nlbatch.RTM_DELROUTE
            items = [(str(n), nlbatch.local_route(n, DPAGENT_PROTO, lo)) for n in members.v4_routes]
            self._batch.apply(kind, items, stop=stop).into(result)
        if members.v6_addresses:
            index = self.interface_index(interface)
            if index is None:
                result.problem = f"interface {interface} not found"
            else:
                kind = nlbatch.RTM_NEWADDR if add else nlbatch.RTM_DELADDR
                items = [(str(a), nlbatch.interface_address(a, DPAGENT_PROTO, index)) for a in members.v6_addresses]
                self._batch.apply(kind, items, nlbatch.IPV6_ADDRESSES_PER_SEND, stop).into(result)
        if stop is not None and stop():
            result.problem = "cut short: the block was released meanwhile"
        result.seconds = time.perf_counter() - started
        return result

    def repair(self, block: Block) -> StepResult:
        """Take the block again: what is there answers EEXIST and stays, what someone
        removed is added back and counted."""
        result = self.take(block)
        result.errors.pop("EEXIST", None)
        result.examples.pop("EEXIST", None)
        return result

    def adjust(self, old: Block, new: Block) -> StepResult:
        """What is new goes in first, then what is gone comes out: what stays is never touched."""
        started = time.perf_counter()
        delta = address_delta(old, new)
        added = self.change(new.address_interface, delta.add, add=True)
        removed = self.change(old.address_interface, delta.remove, add=False)
        result = StepResult(detail={"added": added.as_dict(), "removed": removed.as_dict()})
        result.merge(added)
        result.merge(removed)
        result.seconds = time.perf_counter() - started
        return result

    def remove_leftovers(self) -> StepResult:
        """Delete every route and address carrying our mark: a crashed agent's state."""
        started = time.perf_counter()
        result = StepResult()
        for family in (socket.AF_INET, socket.AF_INET6):
            routes = []
            for msg in self._ipr.get_routes(family=family, table=nlbatch.RT_TABLE_LOCAL):
                if msg["proto"] != DPAGENT_PROTO or msg["type"] != nlbatch.RTN_LOCAL:
                    continue
                net = ip_network(f"{msg.get('RTA_DST')}/{msg['dst_len']}")
                oif = msg.get("RTA_OIF") or 0
                routes.append((str(net), nlbatch.local_route(net, DPAGENT_PROTO, oif)))
            self._batch.apply(nlbatch.RTM_DELROUTE, routes).into(result)
        addresses = []
        for msg in self._ipr.get_addr():
            if msg.get("IFA_PROTO") != DPAGENT_PROTO:
                continue
            address = ip_address(msg.get("IFA_ADDRESS"))
            addresses.append((str(address), nlbatch.interface_address(address, DPAGENT_PROTO, msg["index"])))
        self._batch.apply(nlbatch.RTM_DELADDR, addresses, nlbatch.IPV6_ADDRESSES_PER_SEND).into(result)
        result.seconds = time.perf_counter() - started
        return result


class AddressStep:
    """The addresses facility as a dataplane step. The plane's work runs in the
    runtime's netlink worker (one thread, so changes never interleave), never on
    the loop that sends the adverts."""

    facility = "addresses"
    verbs = {"take": "take", "release": "release", "adjust": "adjust"}

    def __init__(self, worker: Executor) -> None:
        self._worker = worker
        # Blocks whose take must stop at the next sendmsg; read by the worker thread.
        self._cancelled: set[str] = set()
        self._plane: AddressPlane | None = None
        self._leftovers: dict = {}

    async def _run(self, func, *args):
        return await asyncio.get_running_loop().run_in_executor(self._worker, func, *args)

    async def prepare(self, blocks: Sequence[Block]) -> None:
        if self._plane is None:
            self._plane = await self._run(AddressPlane)

    async def take(self, block: Block) -> StepResult:
        self._cancelled.discard(block.name)
        return await self._run(self._plane.take, block, lambda: block.name in self._cancelled)

    async def release(self, block: Block) -> StepResult:
        return await self._run(self._plane.release, block)

    async def adjust(self, old: Block, new: Block) -> StepResult:
        return await self._run(self._plane.adjust, old, new)

    async def repair(self, block: Block) -> StepResult:
        return await self._run(self._plane.repair, block)

    async def remove_leftovers(self) -> StepResult:
        await self.prepare(())
        result = await self._run(self._plane.remove_leftovers)
        self._leftovers = result.as_dict()
        return result

    def refresh(self, blocks: Sequence[Block]) -> None:
        """No lease here: routes and frames are fenced by the gate's."""

    def cancel(self, name: str) -> None:
        self._cancelled.add(name)

    def status(self) -> dict:
        return {"leftovers_removed": self._leftovers}

    async def close(self) -> None:
        if self._plane is not None:
            await self._run(self._plane.close)
