"""Schedules announcement rounds (GARP / unsolicited NA) for the blocks this node holds.

The first round is part of the takeover and is timed as its step. Further rounds
(`rounds`, `round_delay`) and the optional refresh while master run as one task per
block, like keepalived's garp_master_repeat and garp_master_refresh. Every round
runs in the announcer's worker thread; leaving MASTER sets each block's cancel flag,
which the native loop polls before every batch, so sending stops at once.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from agent.config import Block
from agent.dataplane.garp import AnnounceTarget, ArpMode, CancelFlag, RoundResult, Sender
from agent.runtime.scheduling import normal_priority

log = logging.getLogger("dpagent.announce")


class Announcer:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="announce",
                                        initializer=normal_priority)
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
            cached = (block, AnnounceTarget(block.interface, block.packed_v4(), block.packed_v6()))
            self._targets[block.name] = cached
        return cached[1]

    async def prepare(self, blocks: tuple[Block, ...]) -> None:
        """Open the senders and pack the addresses before any takeover needs them:
        a sender's ring costs ~5 ms to set up, the pool thread its start, a /16 1 ms
        of packing; none of it belongs between a resign and the first frame."""
        await self._loop.run_in_executor(self._pool, self._prepare, blocks)

    def _prepare(self, blocks: tuple[Block, ...]) -> None:
        for block in blocks:
            try:
                self._sender(block)
                self._target(block)
            except OSError as exc:
                # The round will meet the same problem and report it in its step.
                log.warning("cannot prepare announcements for block %s: %s", block.name, exc)

    def forget(self, name: str) -> None:
        """The block was redefined or removed: stop announcing it and drop its addresses."""
        self.stop(name)
        self._targets.pop(name, None)

    def _sender(self, block: Block) -> Sender:
        mode = ArpMode.REPLY if block.announce.arp_mode == "reply" else ArpMode.REQUEST
        key = (block.interface, mode)
        sender = self._senders.get(key)
        if sender is None:
            sender = self._senders[key] = Sender(block.interface, mode)
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

    async def first_round(self, block: Block) -> RoundResult:
        """Run the takeover round; then keep repeating in the background per the policy."""
        self.stop(block.name)
        flag = CancelFlag()
        self._cancel[block.name] = flag
        result = await self._round(block, flag)
        if not flag.is_set():
            task = self._loop.create_task(self._repeat(block, flag))
            self._followups[block.name] = task
            task.add_done_callback(lambda done: self._finished(block.name, done))
        return result

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

    def stop(self, name: str) -> None:
        flag = self._cancel.pop(name, None)
        if flag is not None:
            flag.set()
        task = self._followups.pop(name, None)
        if task is not None:
            task.cancel()

    def stop_all(self) -> None:
        for name in list(self._cancel):
            self.stop(name)

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

    def close(self) -> None:
        self.stop_all()
        self._pool.shutdown(wait=True)
        for sender in self._senders.values():
            sender.close()
        self._senders.clear()
