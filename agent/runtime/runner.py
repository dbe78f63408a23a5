"""Carries out the core's per-block decisions through the dataplane steps, one job at a time.

One worker runs the jobs in order, so a takeover and a release never interleave.
A takeover job runs, for every block it names, the steps traffic waits for, and
only then the steps that may run behind it (core.plan), so that no block waits
for another block's announcement. The runner remembers which definition of a
block it put in the kernel (`held`): a release removes exactly that, even after
a reload redefined the block. A release that failed is retried with back-off for
as long as the core does not want the block back. While idle, the held blocks
are checked against the kernel now and then and what someone else removed is
put back and counted (`repairs`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.config import Block
from agent.core import plan
from agent.dataplane.step import DataplaneStep, StepResult
from agent.runtime.transitions import History, StepTimer, Transition

log = logging.getLogger("dpagent")

RETRY_FIRST = 0.5
RETRY_MAX = 30.0
# Seconds between two repair rounds, and how many times the last round's own
# duration they are apart at least: re-taking 65,536 loose addresses costs
# ~0.6 s of netlink work, which must stay a small share of a CPU.
REPAIR_EVERY = 5.0
REPAIR_DUTY = 20


@dataclass(frozen=True)
class _Job:
    kind: str  # "take", "release", "adjust", "announce" or "own"
    # The definitions to take or adjust to; for a release or an announcement only the
    # names matter: the definition held is looked up when the job runs.
    blocks: tuple[Block, ...]
    transition: Transition
    # "own": the buckets, and whom to tell once the kernel holds them.
    buckets: frozenset[int] = frozenset()
    applied: Callable[[str, frozenset[int]], None] | None = None


class StepRunner:
    def __init__(self, loop: asyncio.AbstractEventLoop, steps: Sequence[DataplaneStep], history: History) -> None:
        self._loop = loop
        self._history = history
        self.steps = {step.facility: step for step in steps}
        self.held: dict[str, Block] = {}
        self.wanted: set[str] = set()
        self.last_change: dict[str, dict] = {}
        self.release_retries = 0
        self.repairs: dict[str, int] = {}
        self._repair_timer: asyncio.TimerHandle | None = None
        self._retry_delay: dict[str, float] = {}
        self._retry_timers: dict[str, asyncio.TimerHandle] = {}
        self._jobs: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._worker: asyncio.Task | None = None

    # --- what the daemon asks for (on the loop, never blocking) ---------------------

    def take(self, blocks: Sequence[Block], transition: Transition) -> None:
        self.wanted.update(b.name for b in blocks)
        self._put("take", blocks, transition)

    def release(self, names: Sequence[str], transition: Transition) -> None:
        """Stop work in progress for these blocks now, then release what is held of them."""
        for name in names:
            self.wanted.discard(name)
            for step in self.steps.values():
                step.cancel(name)
        self._put("release", [self.held[n] for n in names if n in self.held], transition)

    def prepare(self, blocks: Sequence[Block], transition: Transition | None) -> None:
        """Queued like the rest, so that takes queued after it find their blocks prepared."""
        self._jobs.append(_Job("prepare", tuple(blocks), transition))
        self._signal()

    def adjust(self, block: Block, transition: Transition) -> None:
        """A held block redefined in place; nothing happens if it is not held by then."""
        self._put("adjust", [block], transition)

    def announce(self, names: Sequence[str], transition: Transition) -> None:
        self._put("announce", [self.held[n] for n in names if n in self.held], transition)

    def own(self, block: Block, buckets: frozenset[int], transition: Transition,
            applied: Callable[[str, frozenset[int]], None]) -> None:
        """An active/active block's buckets, applied in the kernel in order with the other
        jobs (its take comes first, and owns none); `applied` is told what the kernel holds
        afterwards, also when a release came first and it holds nothing."""
        self._jobs.append(_Job("own", (block,), transition, buckets, applied))
        self._signal()

    def refresh(self) -> None:
        """Re-arm every facility's lease for the blocks held and still wanted (on the loop)."""
        blocks = [b for name, b in self.held.items() if name in self.wanted]
        if blocks:
            for step in self.steps.values():
                step.refresh(blocks)

    def _put(self, kind: str, blocks: Sequence[Block], transition: Transition) -> None:
        """Queue a job; blocks of one state change arrive one action at a time and are
        merged into one job, so every block is serving before any is announced."""
        if not blocks:
            return
        last = self._jobs[-1] if self._jobs else None
        if last is not None and last.kind == kind and last.transition is transition and kind in ("take", "release"):
            self._jobs[-1] = _Job(kind, last.blocks + tuple(blocks), transition)
        else:
            self._jobs.append(_Job(kind, tuple(blocks), transition))
        self._signal()

    def _signal(self) -> None:
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        self._worker = self._loop.create_task(self._work())
        self._repair_timer = self._loop.call_later(REPAIR_EVERY, self._repair_due)

    async def drain(self, timeout: float) -> bool:
        """Wait for every queued job; False if they did not finish in time."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def close(self) -> None:
        for timer in self._retry_timers.values():
            timer.cancel()
        if self._repair_timer is not None:
            self._repair_timer.cancel()
        if self._worker is not None:
            self._worker.cancel()

    # --- the worker ------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            if not self._jobs:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            job = self._jobs.popleft()
            try:
                await getattr(self, f"_{job.kind}")(job)
            except Exception:
                log.exception("%s job failed", job.kind)

    async def _prepare(self, job: _Job) -> None:
        for step in self.steps.values():
            await step.prepare(job.blocks)

    async def _step(self, transition: Transition, step: DataplaneStep, op: str, block: Block, *args) -> bool:
        """One timed operation of one facility for one block; False if it raised.

        Errors the kernel reports per item (EEXIST, ESRCH) are in the step's result
        and final: the same request would meet them again.
        """
        verb = step.verbs.get(op)
        if verb is None:
            await getattr(step, op)(*args, block)
            return True
        with StepTimer(transition, f"{verb}:{block.name}") as timed:
            result: StepResult = await getattr(step, op)(*args, block)
            timed.detail = result.as_dict()
            timed.ok = result.ok
            self.last_change.setdefault(block.name, {})[step.facility] = timed.detail
            return True
        return False

    async def _take(self, job: _Job) -> None:
        for phase in (0, 1):
            for block in job.blocks:
                steps = plan.takeover(self.steps, block.l2.mode, block.l2.backend, block.announce.via)
                for planned in plan.phases(steps)[phase]:
                    # The core may have changed its mind while earlier work ran.
                    if block.name not in self.wanted:
                        break
                    # Held before the first change: a take that fails half-way is still released.
                    self.held[block.name] = block
                    await self._step(job.transition, self.steps[planned.facility], "take", block)

    async def _release(self, job: _Job) -> None:
        for named in job.blocks:
            block = self.held.get(named.name)
            if block is None or block.name in self.wanted:
                continue
            ok = True
            for planned in plan.release(self.steps, block.l2.mode, block.l2.backend, block.announce.via):
                ok = await self._step(job.transition, self.steps[planned.facility], "release", block) and ok
            if ok:
                del self.held[block.name]
                self._retry_delay.pop(block.name, None)
            else:
                self._schedule_retry(block.name)

    async def _adjust(self, job: _Job) -> None:
        (block,) = job.blocks
        old = self.held.get(block.name)
        if old is None or old == block:
            return
        for planned in plan.takeover(self.steps, block.l2.mode, block.l2.backend, block.announce.via):
            if block.name in self.wanted:
                await self._step(job.transition, self.steps[planned.facility], "adjust", block, old)
        self.held[block.name] = block

    async def _own(self, job: _Job) -> None:
        (named,) = job.blocks
        block = self.held.get(named.name)
        if job.applied is None:
            return
        if block is None:
            # Released (or never taken): the kernel holds none of its buckets.
            job.applied(named.name, frozenset())
            return
        for planned in plan.takeover(self.steps, block.l2.mode, block.l2.backend, block.announce.via):
            if planned.owns_buckets:
                result = None
                with StepTimer(job.transition, f"own-buckets:{block.name}") as timed:
                    result = await self.steps[planned.facility].own_buckets(block, job.buckets)
                    timed.detail, timed.ok = result.as_dict(), result.ok
                if result is not None and result.ok:
                    job.applied(block.name, job.buckets)

    async def _announce(self, job: _Job) -> None:
        for named in job.blocks:
            block = self.held.get(named.name)
            if block is None:
                continue
            for planned in plan.reannounce(self.steps, block.l2.mode, block.l2.backend, block.announce.via):
                if block.name in self.wanted:
                    await self._step(job.transition, self.steps[planned.facility], "take", block)

    # --- repairing what someone else removed -----------------------------------------

    def _repair_due(self) -> None:
        """Only when idle: a takeover or release never waits behind a repair round."""
        if self._jobs:
            self._repair_timer = self._loop.call_later(REPAIR_EVERY, self._repair_due)
            return
        self._jobs.append(_Job("repair", tuple(self.held.values()), None))
        self._signal()

    async def _repair(self, job: _Job) -> None:
        started = self._loop.time()
        try:
            for block in job.blocks:
                for planned in plan.takeover(self.steps, block.l2.mode, block.l2.backend, block.announce.via):
                    if block.name not in self.wanted or self.held.get(block.name) is not block:
                        break
                    result = await self.steps[planned.facility].repair(block)
                    if result.applied:
                        self.repairs[block.name] = self.repairs.get(block.name, 0) + result.applied
                        log.error("block %s: %d item(s) of %s were missing from the kernel and are back",
                                  block.name, result.applied, planned.facility)
        finally:
            spent = self._loop.time() - started
            self._repair_timer = self._loop.call_later(max(REPAIR_EVERY, spent * REPAIR_DUTY), self._repair_due)

    # --- retrying a failed release -----------------------------------------------------

    def _schedule_retry(self, name: str) -> None:
        delay = self._retry_delay.get(name, RETRY_FIRST)
        self._retry_delay[name] = min(delay * 2, RETRY_MAX)
        log.error("release of block %s incomplete; retrying in %.1f s", name, delay)
        old = self._retry_timers.pop(name, None)
        if old is not None:
            old.cancel()
        self._retry_timers[name] = self._loop.call_later(delay, self._retry, name)

    def _retry(self, name: str) -> None:
        self._retry_timers.pop(name, None)
        block = self.held.get(name)
        if block is None or name in self.wanted:
            return
        self.release_retries += 1
        state = self._history.current.new if self._history.current else "BACKUP"
        self._put("release", [block], self._history.begin(state, state, f"retry release of block {name}"))
