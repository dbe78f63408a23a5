"""The cluster-MAC filter as a dataplane step: the block's multicast MAC received, its buckets owned.

`prepare` puts every cluster-mac block's MAC into its interface's multicast
filter (SIOCADDMULTI, what `ip maddr add` does: a real NIC drops multicast it
was not told about, veth does not care) and loads the block's netdev filter
with no bucket owned (agent.core.clusterset). Every node does this whether it
holds the block or not: every node receives every frame, ownership decides who
accepts. `take` owns all the block's buckets (active/passive) and `release`
none, each one nfnetlink transaction sent from the event loop, like the gate's
leases: ~0.3 ms for 256 buckets, and no thread hop in a takeover.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor

from agent.config import Block
from agent.core import clusterset
from agent.core.buckets import HashFields
from agent.dataplane import maddr
from agent.dataplane.nft import KernelHandles, problem_text
from agent.dataplane.step import StepResult

log = logging.getLogger("dpagent.buckets")

def _all_buckets(block: Block) -> list[int]:
    return list(range(block.l2.buckets))


class ClusterFilter(KernelHandles):
    """The filter's work, blocking: loads in the step's worker, ownership on the event loop."""

    def __init__(self) -> None:
        super().__init__()
        self._prepared = False
        self.loaded: dict[str, Block] = {}
        self.owned: dict[str, int] = {}
        self.problems: dict[str, str] = {}

    def _text(self, commands: str) -> str | None:
        rc, _output, error = self._nft().cmd(commands)
        return None if rc == 0 else problem_text(error)

    def _load(self, block: Block) -> str | None:
        l2 = block.l2
        problem = self._text(clusterset.add_block(block.name, block.interface, l2.cluster_mac, HashFields(l2.hash),
                                                  l2.buckets, l2.hash_seed))
        problem = problem or maddr.change(block.interface, l2.cluster_mac, add=True)
        if problem is None:
            self.loaded[block.name] = block
            self.problems.pop(block.name, None)
        return problem

    def _unload(self, block: Block, configured: Sequence[Block]) -> str | None:
        problem = self._text(clusterset.remove_block(block.name))
        problem = maddr.release(block, configured) or problem
        if problem is None:
            del self.loaded[block.name]
        return problem

    def prepare(self, blocks: Sequence[Block]) -> dict[str, str]:
        """Load the filter of every cluster-mac block not loaded as configured, unload those
        of blocks gone (or no longer cluster-mac) that are not owned; the first call also
        removes what an earlier run left."""
        if not self._prepared:
            problem = self._text(clusterset.DELETE_TABLE)
            if problem is not None:
                log.error("cluster filter: removing an earlier run's table netdev %s: %s", clusterset.TABLE, problem)
            self._prepared = True
        wanted = {b.name: b for b in blocks if b.l2.mode == "cluster-mac" and b.l2.backend == "nft"}
        for name, block in list(self.loaded.items()):
            if wanted.get(name) != block and name not in self.owned:
                problem = self._unload(block, blocks)
                if problem is not None:
                    self.problems[name] = problem
        for name, block in wanted.items():
            if self.loaded.get(name) != block and name not in self.owned:
                try:
                    problem = self._load(block)
                except ValueError as exc:
                    problem = f"bad input: {exc}"
                if problem is not None:
                    self.problems[name] = problem
        return dict(self.problems)

    def own(self, block: Block, owned: list[int]) -> StepResult:
        """Make `owned` the block's buckets on this node, in one transaction."""
        started = time.perf_counter()
        result = StepResult()
        if block.name not in self.loaded:
            result.problem = f"block {block.name} has no cluster filter: {self.problems.get(block.name, 'not prepared')}"
        else:
            try:
                result.problem = self._netlink().transact(
                    lambda seq: clusterset.ownership_batch(block.name, owned, seq))
            except OSError as exc:
                result.problem = f"netlink: {exc}"
        if result.problem is None:
            result.applied = len(owned)
            if owned:
                self.owned[block.name] = len(owned)
            else:
                self.owned.pop(block.name, None)
        result.detail["buckets"] = len(owned)
        result.seconds = time.perf_counter() - started
        return result

    def kernel_owned(self, block: Block) -> list[int] | None:
        """The buckets the kernel's map holds for the block; None if the map is missing."""
        replies, problem = self._netlink().dump(lambda seq: clusterset.owned_dump(block.name, seq))
        if problem is not None:
            return None
        return sorted(b for reply in replies for b in clusterset.owned_buckets(reply.attrs))

    def repair(self, block: Block, wanted: list[int]) -> StepResult:
        """A held block's filter, MAC filter entry and buckets (`wanted`), put back if someone
        removed them."""
        result = StepResult()
        started = time.perf_counter()
        owned = self.kernel_owned(block)
        if owned is None:
            result.problem = self._load(block)
            result.applied += result.problem is None
            result.detail["reloaded"] = block.name
        elif not maddr.listed(block.interface, block.l2.cluster_mac):
            result.problem = maddr.change(block.interface, block.l2.cluster_mac, add=True)
            result.applied += result.problem is None
        if result.problem is None and owned != wanted:
            owning = self.own(block, wanted)
            result.problem = owning.problem
            result.applied += owning.problem is None
        result.seconds = time.perf_counter() - started
        return result

    def remove_leftovers(self) -> StepResult:
        result = StepResult()
        if self._prepared:
            result.detail["skipped"] = "prepared: prepare replaced what an earlier run left"
            return result
        result.problem = self._text(clusterset.DELETE_TABLE)
        return result

    def close(self, unload: bool) -> None:
        """Take the MACs out of the multicast filters when `unload` (the agent stops), and
        close this thread's netlink socket."""
        if unload:
            for block in list(self.loaded.values()):
                problem = maddr.change(block.interface, block.l2.cluster_mac, add=False)
                if problem is not None:
                    log.warning("cluster filter: %s", problem)
        self._close_netlink()


class ClusterStep:
    """Loads in `worker`; ownership changes on the event loop."""

    facility = "buckets"
    verbs = {"take": "own-buckets", "release": "drop-buckets", "adjust": None}

    def __init__(self, worker: Executor) -> None:
        self._worker = worker
        self._filter = ClusterFilter()
        self._leftovers: dict = {}
        # Active/active blocks: the buckets the core gave this node.
        self._shares: dict[str, frozenset[int]] = {}

    async def _run(self, func, *args):
        return await asyncio.get_running_loop().run_in_executor(self._worker, func, *args)

    async def prepare(self, blocks: Sequence[Block]) -> None:
        problems = await self._run(self._filter.prepare, tuple(blocks))
        for name, problem in problems.items():
            log.error("cluster filter of block %s not loaded: %s", name, problem)

    def _wanted(self, block: Block) -> list[int]:
        """All buckets (active/passive), or the block's share (active/active)."""
        return sorted(self._shares.get(block.name, ())) if block.shared else _all_buckets(block)

    async def take(self, block: Block) -> StepResult:
        """All buckets (active/passive); none (active/active: its share comes as own_buckets)."""
        self._shares.pop(block.name, None)
        return self._filter.own(block, self._wanted(block))

    async def own_buckets(self, block: Block, buckets: frozenset[int]) -> StepResult:
        """An active/active block's share changed: one transaction."""
        self._shares[block.name] = buckets
        return self._filter.own(block, sorted(buckets))

    async def release(self, block: Block) -> StepResult:
        return self._filter.own(block, [])

    async def adjust(self, old: Block, new: Block) -> None:
        """The filter matches the block's MAC, not its addresses: nothing to change."""

    async def repair(self, block: Block) -> StepResult:
        return await self._run(self._filter.repair, block, self._wanted(block))

    async def remove_leftovers(self) -> StepResult:
        result = await self._run(self._filter.remove_leftovers)
        self._leftovers = result.as_dict()
        return result

    def refresh(self, blocks: Sequence[Block]) -> None:
        """No lease of its own: the gate's lease is behind this filter (agent.core.clusterset)."""

    def cancel(self, name: str) -> None:
        """Nothing to stop: an ownership change is one small transaction."""

    def status(self) -> dict:
        filt = self._filter
        return {
            "blocks": {name: {"interface": b.interface, "cluster_mac": b.l2.cluster_mac, "buckets": b.l2.buckets,
                              "hash": b.l2.hash, "owned": filt.owned.get(name, 0)}
                       for name, b in sorted(filt.loaded.items())},
            "problems": dict(filt.problems),
            "leftovers_removed": self._leftovers,
        }

    async def kernel_owned(self, block: Block) -> list[int] | None:
        return await self._run(self._filter.kernel_owned, block)

    async def close(self) -> None:
        await self._run(self._filter.close, True)
        self._filter.close(False)
