"""The virtual MAC as a dataplane step: a macvlan with VRRP's MAC, up only while the block is held.

`prepare` creates, down, one macvlan (mode private) per vmac block on the block's
interface, with the block's VRRP MAC (00:00:5e:00:01:VRID or 00:00:5e:00:02:VRID)
and no IPv6 link-local address, so that nothing leaves from the vmac on a node
that does not hold the block. `take` brings it up: the NIC now accepts frames
to the vmac, an IPv6 block's addresses go onto it (their neighbour
advertisements carry the vmac), and the announce step sends a few frames from
it so that switches move the MAC to this port. ARP for an IPv4 block's AnyIP
routes is answered by the parent and the macvlan alike; the gate rewrites the
sender MAC of both replies to the vmac (agent.core.ruleset), so the node's own
MAC never answers for a block address, and an unleased node answers nothing.
The parent's own requests leave from its own address (arp_announce 2, set
here), so no neighbour learns the parent's MAC for a block address either.
`release` brings it down, DOWN_DELAY later (VmacStep says why). A vmac left up
by a released block or a dead agent is fenced by the gate like everything else:
its ARP, NAs and traffic are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.config import Block
from agent.dataplane.step import StepResult

log = logging.getLogger("dpagent.vmac")

IFF_UP = 0x1
# addr_gen_mode 1: no link-local address, so no router solicitation or MLD report
# leaves from the vmac before it holds an address of the block.
IPV6_SETTINGS = {"addr_gen_mode": "1", "accept_dad": "0", "accept_ra": "0"}
VMAC_OUI = "00:00:5e:00:0"
ALL_RP_FILTER = "/proc/sys/net/ipv4/conf/all/rp_filter"
# How long a released vmac stays up, behind a closed gate (see VmacStep).
DOWN_DELAY = 0.2


def _sysctl(path: str, value: str) -> None:
    Path(path).write_text(value)


class Vmacs:
    """The vmac devices, blocking (the netlink worker); pyroute2 does the talking."""

    def __init__(self) -> None:
        self._ipr: IPRoute | None = None
        self.devices: dict[str, Block] = {}
        self.problems: dict[str, str] = {}
        self.up: set[str] = set()

    def _rtnl(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = IPRoute()
        return self._ipr

    def _link(self, name: str) -> dict | None:
        """The device's index, MAC, flags and kind, or None if it does not exist."""
        ipr = self._rtnl()
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        link = ipr.get_links(found[0])[0]
        info = link.get_attr("IFLA_LINKINFO")
        return {"index": found[0], "address": link.get_attr("IFLA_ADDRESS"), "up": bool(link["flags"] & IFF_UP),
                "kind": info.get_attr("IFLA_INFO_KIND") if info else None, "parent": link.get_attr("IFLA_LINK")}

    def _create(self, block: Block) -> None:
        """The block's macvlan, down, replacing one that is not what the block says."""
        ipr, device, mac = self._rtnl(), block.l2.device, block.l2.vmac
        parent = ipr.link_lookup(ifname=block.interface)
        if not parent:
            raise OSError(f"interface {block.interface} not found")
        link = self._link(device)
        if link is not None and (link["kind"], link["address"], link["parent"]) != ("macvlan", mac, parent[0]):
            ipr.link("del", index=link["index"])
            link = None
        if link is None:
            ipr.link("add", ifname=device, kind="macvlan", link=parent[0], macvlan_mode="private", address=mac)
        # The parent's own ARP requests must not carry a block address as sender: the
        # neighbour would learn the parent's MAC for it (the gate rewrites replies only).
        announce = Path(f"/proc/sys/net/ipv4/conf/{block.interface}/arp_announce")
        if int(announce.read_text()) < 2:
            announce.write_text("2")
            log.warning("net.ipv4.conf.%s.arp_announce set to 2 for vmac block %s", block.interface, block.name)
        for key, value in IPV6_SETTINGS.items():
            _sysctl(f"/proc/sys/net/ipv6/conf/{device}/{key}", value)
        # Packets to the vmac arrive on it. It has no IPv4 address, and the kernel's reverse
        # path check drops everything arriving on such a device, strict or loose: off here,
        # which only counts while net.ipv4.conf.all.rp_filter is 0 (checked in prepare).
        _sysctl(f"/proc/sys/net/ipv4/conf/{device}/rp_filter", "0")
        if link is not None and link["up"] and block.name not in self.up:
            ipr.link("set", index=link["index"], state="down")

    def prepare(self, blocks: Sequence[Block]) -> dict[str, str]:
        """Every vmac block's device, down unless held; devices of blocks gone are deleted
        unless held (their release does)."""
        wanted = {b.name: b for b in blocks if b.l2.mode == "vmac"}
        if any(b.addresses and b.addresses[0].version == 4 or b.prefixes and b.prefixes[0].version == 4
               for b in wanted.values()) and Path(ALL_RP_FILTER).read_text().strip() != "0":
            log.error("%s is not 0: IPv4 packets to a vmac are dropped by the reverse path check "
                      "(the vmac has no IPv4 address); set it to 0 and rp_filter per interface", ALL_RP_FILTER)
        for name, block in list(self.devices.items()):
            if wanted.get(name) != block and name not in self.up:
                self._delete(block)
        for name, block in wanted.items():
            if self.devices.get(name) == block or name in self.up:
                continue
            try:
                self._create(block)
                self.devices[name] = block
                self.problems.pop(name, None)
            except (OSError, NetlinkError) as exc:
                self.problems[name] = f"vmac {block.l2.device}: {exc}"
        return dict(self.problems)

    def _delete(self, block: Block) -> None:
        try:
            link = self._link(block.l2.device)
            if link is not None:
                self._rtnl().link("del", index=link["index"])
            del self.devices[block.name]
        except (OSError, NetlinkError) as exc:
            self.problems[block.name] = f"vmac {block.l2.device}: deleting: {exc}"

    def set_up(self, block: Block, up: bool) -> StepResult:
        """One message, by the index an ioctl finds (a pyroute2 lookup and dump cost ~3 ms
        of every takeover here); the device is made first if prepare could not."""
        started = time.perf_counter()
        result = StepResult()
        device = block.l2.device
        try:
            if up and block.name not in self.devices:
                self._create(block)
                self.devices[block.name] = block
            try:
                index = socket.if_nametoindex(device)
            except OSError:
                index = None
            if index is None:
                result.problem = f"vmac {device} not found" if up else None
            else:
                self._rtnl().link("set", index=index, state="up" if up else "down")
                result.applied = 1
        except (OSError, NetlinkError) as exc:
            result.problem = f"vmac {device}: {exc}"
        if up:
            self.up.add(block.name)
        elif result.problem is None:
            self.up.discard(block.name)
        result.detail["device"] = device
        result.seconds = time.perf_counter() - started
        return result

    def repair(self, block: Block) -> StepResult:
        """A held block's vmac, recreated or brought up if someone removed or downed it."""
        link = self._link(block.l2.device)
        if link is not None and link["up"] and link["address"] == block.l2.vmac:
            return StepResult()
        self.devices.pop(block.name, None)
        return self.set_up(block, True)

    def remove_leftovers(self) -> StepResult:
        """Delete every macvlan with a VRRP MAC named as ours: an earlier run's."""
        result = StepResult()
        ipr = self._rtnl()
        for link in ipr.get_links():
            name, info = link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info else None
            if (kind == "macvlan" and name.startswith("dpv") and name not in {b.l2.device for b in self.devices.values()}
                    and str(link.get_attr("IFLA_ADDRESS")).startswith(VMAC_OUI)):
                try:
                    ipr.link("del", index=link["index"])
                    result.applied += 1
                except NetlinkError as exc:
                    result.fail(f"errno {exc.code}", [name])
        return result

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None


class VmacStep:
    """A release leaves the vmac up for DOWN_DELAY more, fenced by the gate it closes right
    after: taking a link down holds the kernel's rtnl lock for milliseconds, and on a
    graceful hand-over the new holder's vmac-up and routes would wait for it (~10 ms here,
    where both nodes share one kernel)."""

    facility = "vmac"
    verbs = {"take": "vmac-up", "release": "vmac-down", "adjust": None}

    def __init__(self, worker: Executor) -> None:
        self._worker = worker
        self._vmacs = Vmacs()
        self._leftovers: dict = {}
        self._downs: dict[str, asyncio.TimerHandle] = {}

    async def _run(self, func, *args):
        return await asyncio.get_running_loop().run_in_executor(self._worker, func, *args)

    async def prepare(self, blocks: Sequence[Block]) -> None:
        problems = await self._run(self._vmacs.prepare, tuple(blocks))
        for name, problem in problems.items():
            log.error("block %s: %s", name, problem)

    async def take(self, block: Block) -> StepResult:
        pending = self._downs.pop(block.name, None)
        if pending is not None:
            pending.cancel()
        return await self._run(self._vmacs.set_up, block, True)

    async def release(self, block: Block) -> StepResult:
        old = self._downs.pop(block.name, None)
        if old is not None:
            old.cancel()
        self._downs[block.name] = asyncio.get_running_loop().call_later(DOWN_DELAY, self._down, block)
        return StepResult(applied=1, detail={"device": block.l2.device, "down_in_s": DOWN_DELAY})

    def _down(self, block: Block) -> None:
        self._downs.pop(block.name, None)
        future = asyncio.get_running_loop().run_in_executor(self._worker, self._vmacs.set_up, block, False)
        future.add_done_callback(lambda done: done.result().problem and log.error(
            "block %s: %s", block.name, done.result().problem))

    async def adjust(self, old: Block, new: Block) -> None:
        """The vmac does not depend on the block's addresses."""

    async def repair(self, block: Block) -> StepResult:
        return await self._run(self._vmacs.repair, block)

    async def remove_leftovers(self) -> StepResult:
        result = await self._run(self._vmacs.remove_leftovers)
        self._leftovers = result.as_dict()
        return result

    def refresh(self, blocks: Sequence[Block]) -> None:
        """No lease of its own: the gate fences a vmac left up by a dead agent."""

    def cancel(self, name: str) -> None:
        """Nothing to stop: bringing a link up or down is one message."""

    def status(self) -> dict:
        vmacs = self._vmacs
        return {"blocks": {name: {"device": b.l2.device, "mac": b.l2.vmac, "up": name in vmacs.up}
                           for name, b in sorted(vmacs.devices.items())},
                "problems": dict(vmacs.problems), "leftovers_removed": self._leftovers}

    async def close(self) -> None:
        """Every vmac released and still up goes down now, before the agent exits."""
        for name, timer in list(self._downs.items()):
            timer.cancel()
            block = self._vmacs.devices.get(name)
            if block is not None:
                await self._run(self._vmacs.set_up, block, False)
        self._downs.clear()
        await self._run(self._vmacs.close)
