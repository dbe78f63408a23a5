"""The daemon: feeds the election core, carries out its decisions, never blocks on them.

The core runs on the event loop and owns exactly one `loop.call_at` timer (the
aioquic pattern). Everything that can take time runs elsewhere: netlink changes in
one worker thread, announcements in another, both awaited by a single transition
worker so that a takeover and a release never interleave. Adverts therefore leave
on time while a /16 is being taken and announced.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from agent.core.actions import ReleaseBlocks, SendFrame, StateChanged, TakeBlocks
from agent.config import Block, Config, ConfigInvalid, format_errors, load_config
from agent.core.election import ElectionConfig, Node
from agent.core.events import AdminCommand, AdminVerb, CarrierLost, LinkChanged, LinkRole, LoopStalled, Shutdown
from agent.core.states import State
from agent.core.wire import KeyRing
from agent.dataplane.addresses import AddressPlane
from agent.runtime import metrics
from agent.runtime.announce import Announcer
from agent.runtime.control import ControlError, ControlServer
from agent.runtime.epoch import next_epoch
from agent.runtime.heartbeat import HeartbeatPort
from agent.runtime.linkmon import NO_CARRIER, LinkMonitor, read_links
from agent.runtime.notify import Notifier
from agent.runtime.scheduling import normal_priority, raise_loop_priority
from agent.runtime.transitions import History, StepTimer, Transition

log = logging.getLogger("dpagent")

# How long a graceful stop waits for the release to finish before exiting anyway.
STOP_TIMEOUT = 10.0


def election_config(config: Config) -> ElectionConfig:
    node = config.node
    return ElectionConfig(
        node_id=node.id,
        priority=node.priority,
        preempt=node.preempt,
        preempt_delay=node.preempt_delay,
        advert_interval=node.advert_interval,
        dead_multiplier=node.dead_multiplier,
    )


@dataclass(frozen=True)
class _Job:
    """One unit of transition work, run in order by the transition worker."""

    take: bool
    blocks: tuple[Block, ...]
    transition: Transition


@dataclass(frozen=True)
class _Adjust:
    """A held block redefined on reload: what is new goes in, then what is gone comes
    out, then the whole block is announced again. It is never released in between,
    so editing an address file does not flap the addresses that stay."""

    old: Block
    new: Block
    transition: Transition


def _without(block: Block, other: Block) -> Block:
    """The part of `block` that `other` does not have."""
    addresses = set(other.addresses)
    return replace(block, prefixes=tuple(p for p in block.prefixes if p not in other.prefixes),
                   addresses=tuple(a for a in block.addresses if a not in addresses))


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        epoch, self.epoch_problem = next_epoch(config.node.state_dir, time.time_ns())
        self.node = Node(election_config(config), KeyRing(config.keys), epoch=epoch)
        self.ports = {link.interface: HeartbeatPort(link, self.loop, self._on_datagram) for link in config.heartbeat}
        self.netlink_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink",
                                               initializer=normal_priority)
        self.config_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="config",
                                              initializer=normal_priority)
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self.addresses: AddressPlane | None = None
        self.announcer = Announcer(self.loop)
        self.history = History()
        self.notifier = Notifier()
        self.control = ControlServer(
            str(config.control_socket),
            {
                "status": lambda _args: self.status(),
                "metrics": lambda _args: {"text": metrics.render(self.status())},
                "failover": self._cmd_failover,
                "maintenance": self._cmd_maintenance,
                "reload": lambda _args: self._cmd_reload(),
            },
        )
        self.monitor: LinkMonitor | None = None
        self.held: dict[str, bool] = {b.name: False for b in config.blocks}
        self.block_results: dict[str, dict] = {}
        self.leftovers: dict = {}
        self.reloads = {"ok": 0, "failed": 0}
        self.max_lag = 0.0
        self.scheduling = "normal"
        self.state_changes = 0
        self.stalls = 0
        self._jobs: asyncio.Queue[_Job | _Adjust] = asyncio.Queue()
        self._transition: Transition | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: float | None = None
        self._last_send: float | None = None
        self._last_watchdog = float("-inf")
        self._stopping = asyncio.Event()

    # --- core plumbing -------------------------------------------------------------

    def _process(self) -> None:
        """Carry out what the core decided, then re-arm its one timer."""
        for action in self.node.actions():
            if isinstance(action, SendFrame):
                self._note_send()
                for port in self.ports.values():
                    port.send(action.data)
            elif isinstance(action, StateChanged):
                self._on_state_changed(action)
            elif isinstance(action, TakeBlocks):
                self._enqueue(take=True, blocks=self.config.blocks)
            elif isinstance(action, ReleaseBlocks):
                # Stop announcing before anything else: we no longer own the addresses.
                self.announcer.stop_all()
                self._enqueue(take=False, blocks=self.config.blocks)
        self._arm_timer()

    def _note_send(self) -> None:
        """Track the worst gap between two frames sent: takeover work must not widen it."""
        now = self.loop.time()
        if self._last_send is not None and self._transition is not None:
            gap = now - self._last_send
            self._transition.max_advert_gap = max(self._transition.max_advert_gap, gap)
        self._last_send = now

    def _on_state_changed(self, change: StateChanged) -> None:
        self._transition = self.history.begin(change.old.name, change.new.name, change.reason)
        self.state_changes += 1
        log.warning("state %s -> %s: %s", change.old.name, change.new.name, change.reason)
        self.notifier.status(f"{change.new.name}: {change.reason}")

    def _enqueue(self, *, take: bool, blocks: tuple[Block, ...]) -> None:
        """Queue work under the current transition (the state change or reload that asked for it)."""
        self._jobs.put_nowait(_Job(take, tuple(blocks), self._transition))

    def _arm_timer(self) -> None:
        due = self.node.get_timer()
        if due == self._timer_due:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_due = due
        if due is not None:
            self._timer = self.loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        now = self.loop.time()
        lag = now - (self._timer_due or now)
        self._timer, self._timer_due = None, None
        try:
            self.max_lag = max(self.max_lag, lag)
            # A timer late by more than one advert interval means the loop itself stalled.
            if lag > self.config.node.advert_interval:
                self.stalls += 1
                log.warning("event loop stalled %.3f s", lag)
                self.node.receive(LoopStalled(lag), now)
            self.node.handle_timer(now)
            self._process()
        finally:
            self._arm_timer()
        self._ping_watchdog(now)

    def _ping_watchdog(self, now: float) -> None:
        """WATCHDOG=1 only from the core's own timer: if adverts stop, so do the pings."""
        interval = self.notifier.watchdog_interval
        if interval is not None and now - self._last_watchdog >= interval:
            self._last_watchdog = now
            self.notifier.watchdog()

    def _on_datagram(self, data: bytes, link: str) -> None:
        self.node.receive_datagram(data, link, self.loop.time())
        self._process()

    def _link_events(self, name: str, up: bool, reason: str) -> list[LinkChanged]:
        """Translate a link's state into what the core must hear.

        Carrier loss on a heartbeat link is what a dead peer at the other end of a
        direct cable looks like, so it is not a local fault: only a heartbeat link
        that is down here (administratively, or gone) counts against this node.
        """
        events = []
        port = self.ports.get(name)
        if port is not None:
            usable = up or reason == NO_CARRIER
            # A re-created interface has a new index: the old socket is bound to nothing.
            port.close()
            if usable:
                port.open()
            events.append(LinkChanged(name, LinkRole.HEARTBEAT, usable, reason))
            if reason == NO_CARRIER:
                events.append(CarrierLost(name))
        if any(b.interface == name for b in self.config.blocks):
            events.append(LinkChanged(name, LinkRole.BLOCK, up, reason))
        return events

    def _on_link(self, name: str, up: bool, reason: str) -> None:
        log.warning("link %s %s (%s)", name, "up" if up else "down", reason)
        now = self.loop.time()
        for event in self._link_events(name, up, reason):
            self.node.receive(event, now)
        self._process()

    # --- transition work -----------------------------------------------------------

    async def _run_netlink(self, func, *args):
        return await self.loop.run_in_executor(self.netlink_pool, func, *args)

    async def _worker(self) -> None:
        while True:
            job = await self._jobs.get()
            try:
                if isinstance(job, _Adjust):
                    await self._adjust(job)
                elif job.take:
                    await self._take(job)
                else:
                    await self._release(job)
            finally:
                self._jobs.task_done()

    async def _change_step(self, transition: Transition, verb: str, name: str, block: Block) -> dict:
        """One timed take or release of `block`'s routes and addresses; returns its detail."""
        change = self.addresses.take if verb == "take" else self.addresses.release
        with StepTimer(transition, f"{verb}:{name}") as step:
            result = await self._run_netlink(change, block)
            step.detail = result.as_dict()
            step.ok = not result.errors and result.problem is None
        return step.detail

    async def _announce_step(self, transition: Transition, block: Block) -> None:
        with StepTimer(transition, f"announce:{block.name}") as step:
            result = await self.announcer.first_round(block)
            step.detail = {"frames_sent": result.frames_sent, "errors": dict(result.errors),
                           "error": result.error, "cancelled": result.cancelled}
            step.ok = result.error is None and not result.errors

    async def _take(self, job: _Job) -> None:
        """Per block: make it local, then announce it, so a small block is not kept
        waiting behind a big one. A block that fails is recorded and the next one goes on."""
        for block in job.blocks:
            # The node may have left MASTER while earlier work ran: then skip the rest.
            if self.node.state is not State.MASTER:
                return
            # Held before the first route goes in: a take that fails half-way must still be released.
            self.held[block.name] = True
            self.block_results[block.name] = await self._change_step(job.transition, "take", block.name, block)
            if self.node.state is not State.MASTER:
                return
            await self._announce_step(job.transition, block)

    async def _release(self, job: _Job) -> None:
        for block in job.blocks:
            self.announcer.stop(block.name)
            if not self.held.get(block.name):
                continue
            detail = await self._change_step(job.transition, "release", block.name, block)
            # A release that raised may have left routes behind: the next one retries.
            if "error" not in detail:
                self.held[block.name] = False

    async def _adjust(self, job: _Adjust) -> None:
        name = job.new.name
        if not self.held.get(name):
            return
        await self._change_step(job.transition, "take", name, _without(job.new, job.old))
        await self._change_step(job.transition, "release", name, _without(job.old, job.new))
        if self.node.state is State.MASTER:
            await self._announce_step(job.transition, job.new)

    # --- control verbs ---------------------------------------------------------------

    def _admin(self, verb: AdminVerb) -> None:
        self.node.receive(AdminCommand(verb), self.loop.time())
        self._process()

    def _cmd_failover(self, _args: dict) -> dict:
        if self.node.state is not State.MASTER:
            raise ControlError(f"not master (state {self.node.state.name}); nothing to hand over")
        self._admin(AdminVerb.FAILOVER)
        return {"message": "resigned; the best backup takes over"}

    def _cmd_maintenance(self, args: dict) -> dict:
        mode = args.get("mode")
        if mode not in ("on", "off"):
            raise ControlError("args.mode must be 'on' or 'off'")
        self._admin(AdminVerb.MAINTENANCE_ON if mode == "on" else AdminVerb.MAINTENANCE_OFF)
        return {"message": f"maintenance {mode}; state {self.node.state.name}"}

    def _spawn(self, coroutine) -> None:
        task = self.loop.create_task(coroutine)
        # The loop keeps only weak references to tasks.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reload_on_signal(self) -> None:
        self._spawn(self.reload())

    async def _cmd_reload(self) -> dict:
        problem = await self.reload()
        if problem:
            raise ControlError(problem)
        return {"message": "configuration reloaded"}

    async def reload(self) -> str | None:
        """Re-read the configuration; apply keys and blocks, refuse what needs a restart.

        Parsing runs in its own thread: a 65,536-line address file takes ~0.3 s,
        twice the peer's dead interval, and the adverts must keep leaving meanwhile.
        """
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                new = await self.loop.run_in_executor(self.config_pool, load_config, self.config.path)
            except ConfigInvalid as exc:
                return self._refuse_reload(format_errors(self.config.path, exc.errors), "configuration invalid")
            return self._apply_reload(new)

    def _refuse_reload(self, message: str, summary: str) -> str:
        self.reloads["failed"] += 1
        log.error("reload refused, keeping the running configuration:\n%s", message)
        self.notifier.ready(f"reload refused: {summary}")
        return message

    def _apply_reload(self, new: Config) -> str | None:
        fixed = ("node", "heartbeat", "control_socket")
        changed = [name for name in fixed if getattr(new, name) != getattr(self.config, name)]
        if changed:
            message = f"reload refused: {', '.join(changed)} changed; these need a restart"
            return self._refuse_reload(message, message.removeprefix("reload refused: "))
        self.node.set_keys(KeyRing(new.keys))
        old_blocks = {b.name: b for b in self.config.blocks}
        new_blocks = {b.name: b for b in new.blocks}
        gone = [b for name, b in old_blocks.items() if name not in new_blocks]
        added = [b for name, b in new_blocks.items() if name not in old_blocks]
        adjusted = []
        for name in old_blocks.keys() & new_blocks.keys():
            old, block = old_blocks[name], new_blocks[name]
            if old == block:
                continue
            if old.interface == block.interface and self.held.get(name):
                adjusted.append((old, block))
            else:
                gone.append(old)
                added.append(block)
        self.config = new
        if gone or added or adjusted:
            # Its own history entry, not more steps of whatever state change came last.
            state = self.node.state.name
            self._transition = self.history.begin(state, state, "reload")
        for block in gone:
            self.announcer.forget(block.name)
        if gone:
            # Still marked held, so the release job removes exactly what the agent had added.
            self._enqueue(take=False, blocks=tuple(gone))
        for old, block in adjusted:
            self.announcer.forget(block.name)
            self._jobs.put_nowait(_Adjust(old, block, self._transition))
        for block in added:
            self.held.setdefault(block.name, False)
        if added or adjusted:
            self._spawn(self.announcer.prepare(tuple(added) + tuple(b for _, b in adjusted)))
        if added and self.node.state is State.MASTER:
            self._enqueue(take=True, blocks=tuple(added))
        self.reloads["ok"] += 1
        log.warning("configuration reloaded: %d block(s) changed", len(gone) + len(added) + len(adjusted))
        self.notifier.ready(f"{self.node.state.name}: reloaded")
        return None

    # --- status ----------------------------------------------------------------------

    def status(self) -> dict:
        now = self.loop.time()
        return {
            "node": self.node.snapshot(now),
            "links": [
                {"name": name, "up": port.is_open, "kernel": self.monitor.describe(name) if self.monitor else "unknown",
                 "send_errors": port.send_errors, "last_error": port.last_error}
                for name, port in self.ports.items()
            ],
            "blocks": [
                {
                    "name": b.name,
                    "interface": b.interface,
                    "addresses": b.address_count,
                    "prefixes": [str(p) for p in b.prefixes],
                    "held": self.held.get(b.name, False),
                    "last_change": self.block_results.get(b.name),
                }
                for b in self.config.blocks
            ],
            "announce": self.announcer.status(),
            "transitions": self.history.as_list(),
            "state_changes": self.state_changes,
            "leftovers_removed": self.leftovers,
            "control_errors": dict(self.control.errors),
            "epoch_problem": self.epoch_problem,
            "loop": {"max_lag_s": round(self.max_lag, 6), "stalls": self.stalls, "scheduling": self.scheduling},
            "reloads": dict(self.reloads),
        }

    # --- life cycle --------------------------------------------------------------------

    async def run(self) -> None:
        self.scheduling = raise_loop_priority(self.config.node.realtime_priority)
        if self.epoch_problem:
            log.error("%s; peers may drop this node's frames as replays after a restart with the clock behind",
                      self.epoch_problem)
        # First, before touching the kernel: a second agent must not clean up the first one's routes.
        await self.control.start()
        self.addresses = await self._run_netlink(AddressPlane)
        cleanup = await self._run_netlink(self.addresses.remove_leftovers)
        self.leftovers = cleanup.as_dict()
        if cleanup.applied:
            log.warning("removed %d leftover routes/addresses of an earlier run", cleanup.applied)
        await self.announcer.prepare(self.config.blocks)
        watched = set(self.ports) | {b.interface for b in self.config.blocks}
        initial = await self._run_netlink(read_links, watched)
        self.monitor = LinkMonitor(self.loop, watched, self._on_link, self.netlink_pool)
        self.monitor.start(initial)
        now = self.loop.time()
        for name, (up, reason) in sorted(initial.items()):
            for event in self._link_events(name, up, reason):
                self.node.receive(event, now)
        worker = self.loop.create_task(self._worker())
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._stopping.set)
        self.loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)
        self.node.start(self.loop.time())
        self._process()
        self.notifier.ready(f"{self.node.state.name}: started")
        log.warning("dpagent node %d started (%d block(s))", self.config.node.id, len(self.config.blocks))
        await self._stopping.wait()
        await self._shutdown(worker)

    async def _shutdown(self, worker: asyncio.Task) -> None:
        self.notifier.stopping()
        self.node.receive(Shutdown(), self.loop.time())
        self._process()
        try:
            await asyncio.wait_for(self._jobs.join(), STOP_TIMEOUT)
        except asyncio.TimeoutError:
            log.error("release did not finish within %.0f s", STOP_TIMEOUT)
        worker.cancel()
        if self._timer is not None:
            self._timer.cancel()
        self.announcer.close()
        self.monitor.close()
        for port in self.ports.values():
            port.close()
        await self.control.close()
        await self._run_netlink(self.addresses.close)
        self.netlink_pool.shutdown(wait=True)
        self.config_pool.shutdown(wait=True)
        log.warning("dpagent stopped")
