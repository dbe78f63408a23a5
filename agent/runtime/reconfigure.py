"""Reload (SIGHUP, `agentctl reload`): re-read the configuration, apply what can change live.

Parsing runs in its own thread: a 65,536-line address file takes ~0.3 s, twice
the peer's dead interval, and the adverts must keep leaving meanwhile. Keys and
blocks change live; the node, its heartbeat links, the control socket, the
metrics listener and [bgp] need a restart and are refused with a message. A refused reload keeps the running
configuration whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import Executor

from agent.config import Block, Config, ConfigInvalid, format_errors, load_config
from agent.core.reload import diff_blocks
from agent.core.sharing import SharedBlock
from agent.core.wire import KeyRing
from agent.runtime.notify import Notifier
from agent.runtime.pump import CorePump
from agent.runtime.runner import StepRunner
from agent.runtime.transitions import History

log = logging.getLogger("dpagent")

NEEDS_RESTART = ("node", "heartbeat", "control_socket", "metrics_listen", "bgp")


def active_passive(blocks: Sequence[Block]) -> tuple[str, ...]:
    """The blocks the election's master holds."""
    return tuple(b.name for b in blocks if not b.shared)


def shared_blocks(blocks: Sequence[Block]) -> tuple[SharedBlock, ...]:
    """The active/active blocks, as the core's ownership sees them."""
    return tuple(SharedBlock(b.name, b.l2.buckets, b.weight) for b in blocks if b.shared)


class Configuration:
    """The running configuration, and the one way it changes."""

    def __init__(self, current: Config, loop: asyncio.AbstractEventLoop, parser: Executor, *,
                 pump: CorePump, runner: StepRunner, history: History, notifier: Notifier) -> None:
        self.current = current
        self.reloads = {"ok": 0, "failed": 0}
        self._loop = loop
        self._parser = parser
        self._pump = pump
        self._runner = runner
        self._history = history
        self._notifier = notifier
        self._lock = asyncio.Lock()

    def block(self, name: str):
        return next(b for b in self.current.blocks if b.name == name)

    async def reload(self) -> str | None:
        """Returns the reason a reload was refused, or None when it was applied."""
        async with self._lock:
            self._notifier.reloading()
            try:
                new = await self._loop.run_in_executor(self._parser, load_config, self.current.path)
            except ConfigInvalid as exc:
                return self._refuse(format_errors(self.current.path, exc.errors), "configuration invalid")
            changed = [name for name in NEEDS_RESTART if getattr(new, name) != getattr(self.current, name)]
            # Between the election's blocks and the shared ones the core would release what it takes.
            changed += [f"mode of block {b.name}" for b in new.blocks
                        if any(o.name == b.name and o.mode != b.mode for o in self.current.blocks)]
            if changed:
                message = f"reload refused: {', '.join(changed)} changed; these need a restart"
                return self._refuse(message, message.removeprefix("reload refused: "))
            self._apply(new)
            return None

    def _refuse(self, message: str, summary: str) -> str:
        self.reloads["failed"] += 1
        log.error("reload refused, keeping the running configuration:\n%s", message)
        self._notifier.ready(f"reload refused: {summary}")
        return message

    def _apply(self, new: Config) -> None:
        old = self.current
        diff = diff_blocks({b.name: b for b in old.blocks}, {b.name: b for b in new.blocks})
        self.current = new
        node = self._pump.node
        node.set_keys(KeyRing(new.keys))
        runner = self._runner
        if not diff.empty:
            # Its own history entry, not more steps of whatever state change came last.
            state = node.state.name
            transition = self._history.begin(state, state, "reload")
            runner.prepare(new.blocks, transition)
            for name in diff.replaced:
                if name in runner.held:
                    wanted = name in runner.wanted
                    runner.release([name], transition)
                    if wanted:
                        runner.take([self.block(name)], transition)
                        if self.block(name).shared:
                            node.shared_block_taken_again(name, self._loop.time())
            for name in diff.adjusted:
                runner.adjust(self.block(name), transition)
            # The core decides what an added or removed block means for this node.
            node.set_blocks(active_passive(new.blocks), self._loop.time())
            node.set_shared_blocks(shared_blocks(new.blocks), self._loop.time())
            self._pump.process()
        self.reloads["ok"] += 1
        changed = len(diff.added) + len(diff.removed) + len(diff.adjusted) + len(diff.replaced)
        log.warning("configuration reloaded: %d block(s) changed", changed)
        self._notifier.ready(f"{node.state.name}: reloaded")
