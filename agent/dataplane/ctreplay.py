"""The takeover's first step: the peers' connection state into this node's kernel.

It runs before the gate opens, so the first packet of an established flow
meets its entry (with its NAT) instead of a strict ruleset's "new without SYN:
drop" or a RST. State is per node, not per block: the first block taken after
holding none replays the whole cache, the others find it done. Entries that
carry traffic (TCP established, other assured flows) go first, then the rest.
In hot standby every change was written as it arrived, so the step only
confirms what the kernel holds and writes nothing.

Nothing is removed on release: the entries time out by themselves, and the
node that takes over sends its own table back when asked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

from agent.config import Block
from agent.dataplane import conntrack as ct
from agent.dataplane.step import StepResult
from agent._native._ct import lib


class ConntrackStep:
    facility = "conntrack"
    verbs = {"take": "replay", "release": None, "adjust": None}

    def __init__(self, worker: Executor, writer: ct.Writer, cache: ct.Cache | None,
                 quiet: Callable[[bool], None]) -> None:
        self._worker = worker
        self._writer = writer
        self._cache = cache
        # Events off while the replay runs (the sync's ConntrackSync.quiet).
        self._quiet = quiet
        self._held: set[str] = set()
        self.last_replay: dict = {}
        self.replays = 0

    async def prepare(self, blocks: Sequence[Block]) -> None:
        """Nothing to do ahead: the cache is filled by the sync as it runs."""

    async def take(self, block: Block) -> StepResult:
        first = not self._held
        self._held.add(block.name)
        if self._cache is None:
            return StepResult(detail={"mode": "hot", "kernel_entries": ct.table_size().get("count")})
        if not first:
            return StepResult(detail={"mode": "cache", "replayed": "with an earlier block"})
        return await asyncio.get_running_loop().run_in_executor(self._worker, self.replay)

    def replay(self) -> StepResult:
        """Write the cache into the kernel, carrying flows first (also `agentctl conntrack commit`)."""
        result = StepResult(detail={"mode": "cache"})
        started = time.perf_counter()
        self._quiet(True)
        try:
            self._write_classes(result)
        finally:
            self._quiet(False)
        seconds = time.perf_counter() - started
        result.detail["entries_per_s"] = round(result.applied / seconds) if seconds > 0 else 0
        self.replays += 1
        self.last_replay = {**result.as_dict(), "seconds": round(seconds, 6)}
        return result

    def _write_classes(self, result: StepResult) -> None:
        for name, klass in (("carrying", lib.DP_CT_CLASS_CARRYING), ("rest", lib.DP_CT_CLASS_REST)):
            phase = time.perf_counter()
            written = 0
            for chunk in self._cache.export(klass):
                outcome = self._writer.write(chunk)
                written += outcome.applied
                result.applied += outcome.applied
                for err, count in outcome.errors.items():
                    result.fail(err, [], count)
            result.detail[f"{name}_entries"] = written
            result.detail[f"{name}_seconds"] = round(time.perf_counter() - phase, 6)

    async def release(self, block: Block) -> StepResult:
        self._held.discard(block.name)
        return StepResult()

    async def adjust(self, old: Block, new: Block) -> StepResult:
        return StepResult()

    async def repair(self, block: Block) -> StepResult:
        return StepResult()

    async def remove_leftovers(self) -> StepResult:
        """A crashed run leaves only entries the kernel times out by itself."""
        return StepResult()

    def refresh(self, blocks: Sequence[Block]) -> None:
        """No lease: entries without the gate carry no traffic."""

    def cancel(self, name: str) -> None:
        """A replay in progress finishes: it is the state of every block, not of this one."""

    def status(self) -> dict:
        return {"replays": self.replays, "last_replay": self.last_replay}

    async def close(self) -> None:
        """The writer belongs to the sync, which closes it."""
