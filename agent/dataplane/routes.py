"""Companion routes that BIRD announces upstream while this node holds a block.

BIRD's kernel protocol skips `local` routes, so the AnyIP route that makes a
block local is invisible to it. For every prefix (and every loose address, as a
host route) of a block announced via BGP the holder adds `unreachable PREFIX
table 199 proto 199`: no rule looks table 199 up, so forwarding is untouched,
and BIRD's kernel protocols learn exactly these routes (`krt_source = 199`,
packaging/bird-dpagent.conf) and its BGP sessions export them. The agent never
speaks BGP nor writes BIRD's configuration; it checks that BIRD runs with those
protocols, and a BIRD that is missing is a warning in the log and in status,
never a reason to fail a takeover. Every route carries protocol 199 as the
addresses do, so `dpagent cleanup` finds what a dead agent left announced.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from ipaddress import ip_network

from pyroute2 import IPRoute

from agent.config import BgpConfig, Block
from agent.core.packing import IPAddress, IPNetwork
from agent.dataplane import bird, nlbatch
from agent.dataplane.addresses import DPAGENT_PROTO
from agent.dataplane.step import StepResult

log = logging.getLogger("dpagent")

# The routing table BIRD's kernel protocols learn from; no ip rule looks it up.
ROUTE_TABLE = 199
# Seconds between two BIRD checks after the one at start-up: a BIRD started or
# stopped later shows in status within this.
CHECK_EVERY = 30.0
# After a take or release, BIRD is asked again this soon, so that status shows
# whether it learned the change (it does within milliseconds).
CHECK_AFTER_CHANGE = 0.2


def companion_routes(prefixes: Iterable[IPNetwork], addresses: Iterable[IPAddress]) -> list[IPNetwork]:
    """What a block announces: each prefix, and each loose address as a /32 or /128."""
    return [*prefixes, *(ip_network(a) for a in addresses)]


class RoutePlane:
    """Blocking netlink work, for the runtime's netlink worker."""

    def __init__(self) -> None:
        self._ipr = IPRoute()
        self._batch = nlbatch.Batcher()

    def close(self) -> None:
        self._batch.close()
        self._ipr.close()

    def change(self, routes: Sequence[IPNetwork], *, add: bool) -> StepResult:
        started = time.perf_counter()
        result = StepResult()
        kind = nlbatch.RTM_NEWROUTE if add else nlbatch.RTM_DELROUTE
        items = [(str(n), nlbatch.table_route(n, DPAGENT_PROTO, ROUTE_TABLE)) for n in routes]
        self._batch.apply(kind, items).into(result)
        result.seconds = time.perf_counter() - started
        return result

    def take(self, block: Block) -> StepResult:
        return self.change(companion_routes(block.prefixes, block.addresses), add=True)

    def release(self, block: Block) -> StepResult:
        return self.change(companion_routes(block.prefixes, block.addresses), add=False)

    def adjust(self, old: Block, new: Block) -> StepResult:
        """The new routes first, then the ones gone: what stays is never withdrawn."""
        started = time.perf_counter()
        before = companion_routes(old.prefixes, old.addresses)
        after = companion_routes(new.prefixes, new.addresses)
        added = self.change([r for r in after if r not in set(before)], add=True)
        removed = self.change([r for r in before if r not in set(after)], add=False)
        result = StepResult(detail={"added": added.as_dict(), "removed": removed.as_dict()})
        result.merge(added)
        result.merge(removed)
        result.seconds = time.perf_counter() - started
        return result

    def repair(self, block: Block) -> StepResult:
        """Add every route again: those there answer EEXIST and stay, the missing are counted."""
        result = self.take(block)
        result.errors.pop("EEXIST", None)
        result.examples.pop("EEXIST", None)
        return result

    def remove_leftovers(self) -> StepResult:
        """Delete every route of ours in table 199, whatever its type: a dead agent's announcements."""
        started = time.perf_counter()
        result = StepResult()
        items = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self._ipr.get_routes(family=family, table=ROUTE_TABLE):
                if msg["proto"] != DPAGENT_PROTO or (msg.get("RTA_TABLE") or msg["table"]) != ROUTE_TABLE:
                    continue
                net = ip_network(f"{msg.get('RTA_DST') or ('::' if family == socket.AF_INET6 else '0.0.0.0')}"
                                 f"/{msg['dst_len']}")
                items.append((str(net), nlbatch.table_route(net, DPAGENT_PROTO, ROUTE_TABLE, msg["type"])))
        self._batch.apply(nlbatch.RTM_DELROUTE, items).into(result)
        result.seconds = time.perf_counter() - started
        return result


class RouteStep:
    """The routes facility as a dataplane step: netlink work in the netlink worker, in
    order with the addresses; the BIRD check in a worker of its own, since a hung BIRD
    may take its whole timeout to say nothing."""

    facility = "routes"
    verbs = {"take": "route", "release": "withdraw", "adjust": "reroute"}

    def __init__(self, loop: asyncio.AbstractEventLoop, worker: Executor, checker: Executor,
                 bgp: BgpConfig = BgpConfig()) -> None:
        self._loop = loop
        self._worker = worker
        self._checker = checker
        self._bgp = bgp
        self._plane: RoutePlane | None = None
        self._routed: tuple[str, ...] = ()
        self._held: dict[str, int] = {}
        self._bird: dict | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._checking: asyncio.Task | None = None
        self._leftovers: dict = {}

    async def _run(self, func, *args):
        return await self._loop.run_in_executor(self._worker, func, *args)

    async def prepare(self, blocks: Sequence[Block]) -> None:
        if self._plane is None:
            self._plane = await self._run(RoutePlane)
        self._routed = tuple(b.name for b in blocks if b.routed)
        if self._routed:
            # Not awaited: a hung BIRD must not hold up the start or a takeover queued behind.
            self._schedule(0)
        elif self._timer is not None:
            self._timer.cancel()
            self._timer, self._bird = None, None

    async def _check(self) -> None:
        """Ask BIRD now; a change of its problem is logged once, then again every CHECK_EVERY."""
        found = await self._loop.run_in_executor(self._checker, bird.check, self._bgp.bird_socket,
                                                 self._bgp.protocols)
        before = self._bird["problem"] if self._bird else None
        if found["problem"] and found["problem"] != before:
            log.warning("BIRD: %s; block(s) %s are not announced upstream until it is", found["problem"],
                        ", ".join(self._routed))
        elif before and not found["problem"]:
            log.warning("BIRD %s runs with %s: announcing upstream", found["version"], ", ".join(self._bgp.protocols))
        self._bird = found
        if self._timer is None:  # else a take or release asked for another check meanwhile
            self._schedule(CHECK_EVERY)

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(delay, self._check_due)

    def _check_due(self) -> None:
        self._timer = None
        if not self._routed:
            return
        if self._checking is not None and not self._checking.done():
            self._schedule(CHECK_AFTER_CHANGE)
            return
        self._checking = self._loop.create_task(self._check())

    async def take(self, block: Block) -> StepResult:
        result = await self._run(self._plane.take, block)
        self._held[block.name] = result.applied + result.errors.get("EEXIST", 0)
        self._schedule(CHECK_AFTER_CHANGE)
        return result

    async def release(self, block: Block) -> StepResult:
        result = await self._run(self._plane.release, block)
        self._held.pop(block.name, None)
        self._schedule(CHECK_AFTER_CHANGE)
        return result

    async def adjust(self, old: Block, new: Block) -> StepResult:
        result = await self._run(self._plane.adjust, old, new)
        self._held[new.name] = len(companion_routes(new.prefixes, new.addresses))
        return result

    async def repair(self, block: Block) -> StepResult:
        return await self._run(self._plane.repair, block)

    async def remove_leftovers(self) -> StepResult:
        if self._plane is None:
            self._plane = await self._run(RoutePlane)
        result = await self._run(self._plane.remove_leftovers)
        self._leftovers = result.as_dict()
        return result

    def refresh(self, blocks: Sequence[Block]) -> None:
        """No lease: a dead agent's routes go with `dpagent cleanup` (ExecStopPost)."""

    def cancel(self, name: str) -> None:
        """One message per prefix: a take is over before a cancel could cut it short."""

    def status(self) -> dict:
        return {"table": ROUTE_TABLE, "announced": dict(self._held), "bird": self._bird,
                "leftovers_removed": self._leftovers}

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._checking is not None:
            self._checking.cancel()
        if self._plane is not None:
            await self._run(self._plane.close)
