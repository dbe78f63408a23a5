"""Announcement rounds (GARP / unsolicited NA) for the blocks this node holds, as a step.

The first round is the step of the takeover. Further rounds (`rounds`,
`round_delay`) and the optional refresh while master run as one task per block,
like keepalived's garp_master_repeat and garp_master_refresh. Every round runs in
the runtime's announce worker thread; a release cancels the block's flag, which
the native loop polls before every batch, so sending stops at once.

A vmac block's neighbours already know its MAC: its rounds are one frame each,
for the block's first address, from the vmac's macvlan, which is what moves the
MAC to this node's port in the switches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import Executor

from agent.config import Block
from agent.dataplane.garp import AnnounceTarget, ArpMode, CancelFlag, RoundResult, Sender
from agent.dataplane.step import StepResult

log = logging.getLogger("dpagent.announce")


def _interface(block: Block) -> str:
    """Where the block's frames leave from: a vmac block's from its macvlan."""
    return block.l2.device if block.l2.mode == "vmac" and block.l2.device else block.interface


class AnnounceStep:
    facility = "announce"
    # A release is the cancel that came before it: nothing left to time.
    verbs = {"take": "announce", "adjust": "announce", "release": None}

    def __init__(self, loop: asyncio.AbstractEventLoop, worker: Executor) -> None:
        self._loop = loop
        self._pool = worker
        self._senders: dict[tuple[str, ArpMode], Sender] = {}
        self._targets: dict[str, tuple[Block, AnnounceTarget]] = {}
        self._cancel: dict[str, CancelFlag] = {}
        self._followups: dict[str, asyncio.Task] = {}
        self.frames_sent = 0
        self.send_errors: dict[str, int] = {}
        self.rounds = 0
        self.last_duration: float | None = None
        self.last_error: str | None = None

    def _target(self, block: Block) -> AnnounceTarget:
        """Packed addresses of a block, computed once per block definition, in the
        announce thread: packing a /8 would hold the loop longer than a dead interval."""
        cached = self._targets.get(block.name)
        if cached is None or cached[0] is not block:
            v4, v6 = block.packed_v4(), block.packed_v6()
            if block.l2.mode == "vmac":
                v4, v6 = v4[:4], v6[:16] if not v4 else b""
            cached = (block, AnnounceTarget(_interface(block), v4, v6))
            self._targets[block.name] = cached
        return cached[1]

    async def prepare(self, blocks: Sequence[Block]) -> None:
        """Open the senders and pack the addresses before any takeover needs them:
        a sender's ring costs ~5 ms to set up, the pool thread its start, a /16 1 ms
        of packing; none of it belongs between a resign and the first frame.
        Blocks no longer configured are forgotten."""
        names = {b.name for b in blocks}
        for name in [n for n in self._targets if n not in names]:
            self.cancel(name)
            del self._targets[name]
        await self._loop.run_in_executor(self._pool, self._prepare, tuple(blocks))

    def _prepare(self, blocks: tuple[Block, ...]) -> None:
        for block in blocks:
            try:
                self._sender(block)
                self._target(block)
            except OSError as exc:
                # The round will meet the same problem and report it in its step.
                log.warning("cannot prepare announcements for block %s: %s", block.name, exc)

    def _sender(self, block: Block) -> Sender:
        mode = ArpMode.REPLY if block.announce.arp_mode == "reply" else ArpMode.REQUEST
        key = (_interface(block), mode)
        sender = self._senders.get(key)
        if sender is None:
            sender = self._senders[key] = Sender(key[0], mode)
        return sender

    def _account(self, result: RoundResult) -> None:
        self.rounds += 1
        self.frames_sent += result.frames_sent
        for name, count in result.errors.items():
            self.send_errors[name] = self.send_errors.get(name, 0) + count
        self.last_duration = result.duration
        if result.error:
            self.last_error = result.error

    def _send_round(self, block: Block, flag: CancelFlag) -> RoundResult:
        return self._sender(block).send_round(self._target(block), block.announce.pps, flag)

    async def _round(self, block: Block, flag: CancelFlag) -> RoundResult:
        result = await self._loop.run_in_executor(self._pool, self._send_round, block, flag)
        self._account(result)
        return result

    async def take(self, block: Block) -> StepResult:
        """Run the takeover round; then keep repeating in the background per the policy."""
        self.cancel(block.name)
        flag = CancelFlag()
        self._cancel[block.name] = flag
        result = await self._round(block, flag)
        if not flag.is_set():
            task = self._loop.create_task(self._repeat(block, flag))
            self._followups[block.name] = task
            task.add_done_callback(lambda done: self._finished(block.name, done))
        step = StepResult(applied=result.frames_sent, problem=result.error, seconds=result.duration,
                          detail={"frames_sent": result.frames_sent, "cancelled": result.cancelled})
        for name, count in result.errors.items():
            step.fail(name, [], count)
        return step

    async def adjust(self, old: Block, new: Block) -> StepResult:
        """Announce the whole block again: a neighbour may never have heard of the new addresses."""
        return await self.take(new)

    async def release(self, block: Block) -> StepResult:
        self.cancel(block.name)
        return StepResult()

    async def repair(self, block: Block) -> StepResult:
        """Frames leave no state behind: nothing to put back."""
        return StepResult()

    async def remove_leftovers(self) -> StepResult:
        """Frames leave no state behind."""
        return StepResult()

    def _finished(self, name: str, task: asyncio.Task) -> None:
        if self._followups.get(name) is task:
            del self._followups[name]

    async def _repeat(self, block: Block, flag: CancelFlag) -> None:
        policy = block.announce
        for _ in range(policy.rounds - 1):
            await asyncio.sleep(policy.round_delay)
            if flag.is_set():
                return
            await self._round(block, flag)
        while policy.refresh > 0 and not flag.is_set():
            await asyncio.sleep(policy.refresh)
            if flag.is_set():
                return
            await self._round(block, flag)

    def refresh(self, blocks: Sequence[Block]) -> None:
        """No lease here: routes and frames are fenced by the gate's."""

    def cancel(self, name: str) -> None:
        flag = self._cancel.pop(name, None)
        if flag is not None:
            flag.set()
        task = self._followups.pop(name, None)
        if task is not None:
            task.cancel()

    def status(self) -> dict:
        return {
            "frames_sent": self.frames_sent,
            "send_errors": sum(self.send_errors.values()),
            "send_errors_by_errno": dict(self.send_errors),
            "rounds": self.rounds,
            "last_duration_s": self.last_duration,
            "last_error": self.last_error,
            "repeating": sorted(self._followups),
        }

    async def close(self) -> None:
        for name in list(self._cancel):
            self.cancel(name)
        await self._loop.run_in_executor(self._pool, self._close_senders)

    def _close_senders(self) -> None:
        for sender in self._senders.values():
            sender.close()
        self._senders.clear()
