"""The daemon: wires the election core to the sockets, the link monitor and the dataplane steps.

The core runs on the event loop behind one `call_at` (runtime.pump). Everything
that can take time runs elsewhere: netlink changes in one worker thread,
announcements in another, both driven by one step runner, so a takeover and a
release never interleave and adverts leave on time while a /16 is taken and
announced. This module only builds those pieces, routes between them, and runs
the life cycle.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from agent.config import Config
from agent.core.actions import Action, Announce, OwnBuckets, ReleaseBlock, StateChanged, TakeBlock
from agent.core.election import Node
from agent.core.sharing import Sharing
from agent.core.events import CarrierLost, Shutdown
from agent.core.links import UP, heartbeat_usable, link_events
from agent.core.wire import KeyRing
from agent.runtime import metrics, status, verbs
from agent.runtime.cleanup import WORKERS, build_steps, remove_leftovers, worker
from agent.dataplane.ctreplay import ConntrackStep
from agent.runtime.control import ControlServer
from agent.runtime.ctsync import ConntrackSync
from agent.runtime.epoch import next_epoch
from agent.runtime.heartbeat import HeartbeatPort
from agent.runtime.linkmon import LinkMonitor, read_links
from agent.runtime.notify import Notifier
from agent.runtime.pump import CorePump
from agent.runtime.reconfigure import Configuration, active_passive, shared_blocks
from agent.runtime.runner import StepRunner
from agent.runtime.scrape import MetricsListener
from agent.runtime.scheduling import raise_loop_priority
from agent.runtime.transitions import History

log = logging.getLogger("dpagent")

# How long a graceful stop waits for the release to finish before exiting anyway.
STOP_TIMEOUT = 10.0


class Daemon:
    def __init__(self, config: Config) -> None:
        self.loop = asyncio.get_running_loop()
        epoch, self.epoch_problem = next_epoch(config.node.state_dir, time.time_ns())
        node = Node(config.node.election, KeyRing(config.keys), epoch=epoch,
                    blocks=active_passive(config.blocks),
                    sharing=Sharing(config.node.id, epoch, shared_blocks(config.blocks)))
        self.history = History()
        self.notifier = Notifier()
        self.pump = CorePump(self.loop, node, self.history, stall_after=config.node.advert_interval,
                             send=self._send, dispatch=self._dispatch, watchdog=self._ping_watchdog,
                             tick=lambda: self.runner.refresh())
        self.ports = {link.interface: HeartbeatPort(link, self.loop, self.pump.datagram, self._on_port)
                      for link in config.heartbeat}
        self.workers = {name: worker(name) for name in (*WORKERS, "config", "conntrack")}
        self.sync: ConntrackSync | None = None
        first = ()
        if config.conntrack is not None:
            self.sync = ConntrackSync(self.loop, config.conntrack, KeyRing(config.keys), config.node.id, epoch,
                                      self.workers["conntrack"], holding=lambda: bool(self.runner.held),
                                      # The peers' link addresses: their adverts and sync frames.
                                      extra_ignore=tuple(dict.fromkeys(
                                          [str(a) for link in config.heartbeat for a in link.peers]
                                          + [str(a) for a in config.conntrack.peers])),
                                      link_interfaces=tuple(link.interface for link in config.heartbeat))
            first = (ConntrackStep(self.workers["conntrack"], self.sync.writer, self.sync.cache, self.sync.quiet),)
        # The gate's lease is one dead interval: a hung agent's node stops serving by the
        # time the peer, at the earliest, takes over.
        steps = build_steps(self.loop, self.workers, lease=config.node.dead_interval, bgp=config.bgp, first=first)
        self.runner = StepRunner(self.loop, steps, self.history)
        self.configuration = Configuration(config, self.loop, self.workers["config"], pump=self.pump,
                                           runner=self.runner, history=self.history, notifier=self.notifier)
        handlers = verbs.handlers(self.pump, self.status, metrics.render, self.configuration.reload)
        if self.sync is not None:
            handlers |= verbs.conntrack_handlers(self.sync, first[0])
        self.control = ControlServer(str(config.control_socket), handlers)
        self.monitor: LinkMonitor | None = None
        self.metrics: MetricsListener | None = None
        self.leftovers: dict = {}
        self.scheduling = "normal"
        self.state_changes = 0
        self._tasks: set[asyncio.Task] = set()
        self._last_watchdog = float("-inf")
        self._stopping = asyncio.Event()

    # --- routing between the pieces ---------------------------------------------------

    def _send(self, data: bytes) -> None:
        for port in self.ports.values():
            port.send(data)

    def _dispatch(self, action: Action) -> None:
        current = self.history.current
        if isinstance(action, StateChanged):
            self.history.begin(action.old.name, action.new.name, action.reason)
            self.state_changes += 1
            log.warning("state %s -> %s: %s", action.old.name, action.new.name, action.reason)
            self.notifier.status(f"{action.new.name}: {action.reason}")
        elif isinstance(action, TakeBlock):
            self.runner.take([self.configuration.block(action.name)], current)
        elif isinstance(action, ReleaseBlock):
            self.runner.release([action.name], current)
        elif isinstance(action, Announce):
            self.runner.announce([action.name], current)
        elif isinstance(action, OwnBuckets):
            if current is None:
                state = self.pump.node.state.name
                current = self.history.begin(state, state, action.reason)
            self.runner.own(self.configuration.block(action.name), action.buckets, current, self._buckets_applied)

    def _buckets_applied(self, name: str, buckets: frozenset[int]) -> None:
        """The kernel holds these buckets now: a frame may say so."""
        self.pump.node.buckets_applied(name, buckets)
        self.pump.process()

    def _ping_watchdog(self, now: float) -> None:
        """WATCHDOG=1 only from the core's own timer: if adverts stop, so do the pings."""
        interval = self.notifier.watchdog_interval
        if interval is not None and now - self._last_watchdog >= interval:
            self._last_watchdog = now
            self.notifier.watchdog()

    def _on_link(self, name: str, up: bool, reason: str) -> None:
        log.warning("link %s %s (%s)", name, "up" if up else "down", reason)
        self.pump.events(self._link_events(name, up, reason))

    def _link_events(self, name: str, up: bool, reason: str) -> list:
        port = self.ports.get(name)
        if port is not None:
            # Reopened on every event: a re-created interface has a new index.
            port.want(heartbeat_usable(up, reason))
        return self._events_for(name, up, reason)

    def _events_for(self, name: str, up: bool, reason: str) -> list:
        port = self.ports.get(name)
        problem = port.last_error or "not open" if port is not None and not port.is_open else ""
        blocks = {b.interface for b in self.configuration.current.blocks}
        return link_events(name, up, reason, heartbeat=port is not None, block=name in blocks,
                           socket_problem=problem)

    def _on_port(self, name: str) -> None:
        """A heartbeat socket opened or closed on its own (taken port, a retry that worked)."""
        if self.monitor is None:
            return
        reason = self.monitor.describe(name)
        port = self.ports[name]
        log.warning("heartbeat socket on %s %s%s", name, "open" if port.is_open else "closed",
                    "" if port.is_open else f": {port.last_error}")
        events = [e for e in self._events_for(name, reason == UP, reason) if not isinstance(e, CarrierLost)]
        self.pump.events(events)

    # --- status --------------------------------------------------------------------------

    def status(self) -> dict:
        config = self.configuration.current
        runner = self.runner
        return {
            "node": self.pump.node.snapshot(self.loop.time()),
            "links": [status.link_status(name, port.is_open, self.monitor.describe(name) if self.monitor else "unknown",
                                         port.send_errors, port.last_error, dict(port.drops))
                      for name, port in self.ports.items()],
            "blocks": [status.block_status(b, runner.held.get(b.name), runner.last_change.get(b.name))
                       for b in config.blocks],
            **{facility: step.status() for facility, step in runner.steps.items()},
            **({"conntrack": {**runner.steps["conntrack"].status(), **self.sync.stats()}} if self.sync else {}),
            "transitions": self.history.as_list(),
            "state_changes": self.state_changes,
            "leftovers_removed": self.leftovers,
            "release_retries": runner.release_retries,
            "repairs": dict(runner.repairs),
            "control_errors": dict(self.control.errors),
            "epoch_problem": self.epoch_problem,
            "loop": {"max_lag_s": round(self.pump.max_lag, 6), "stalls": self.pump.stalls,
                     "scheduling": self.scheduling},
            "reloads": dict(self.configuration.reloads),
        }

    # --- life cycle ------------------------------------------------------------------------

    async def run(self) -> bool:
        """Run until SIGTERM; True if everything the agent put in the kernel is gone again."""
        config = self.configuration.current
        self.scheduling = raise_loop_priority(config.node.realtime_priority)
        if self.epoch_problem:
            log.error("%s; peers may drop this node's frames as replays after a restart with the clock behind",
                      self.epoch_problem)
        # First, before touching the kernel: a second agent must not clean up the first one's routes.
        await self.control.start()
        if config.metrics_listen is not None:
            try:
                self.metrics = MetricsListener(self.loop, self.status, *config.metrics_listen)
                self.metrics.start()
            except OSError as exc:
                log.error("metrics: cannot listen on %s port %d: %s; running without", *config.metrics_listen,
                          exc.strerror or exc)
        self.runner.start()
        self.runner.prepare(config.blocks, None)
        await self.runner.drain(timeout=None)
        self.leftovers = await remove_leftovers(tuple(self.runner.steps.values()))
        if self.leftovers["applied"]:
            log.warning("removed %d leftovers of an earlier run", self.leftovers["applied"])
        if self.sync is not None:
            self.sync.start()
        watched = set(self.ports) | {b.interface for b in config.blocks}
        initial = await self.loop.run_in_executor(self.workers["netlink"], read_links, watched)
        self.monitor = LinkMonitor(self.loop, watched, self._on_link, self.workers["netlink"])
        self.monitor.start(initial)
        self.pump.events([e for name, (up, why) in sorted(initial.items()) for e in self._link_events(name, up, why)])
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._stopping.set)
        self.loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)
        self.pump.start()
        self.notifier.ready(f"{self.pump.node.state.name}: started")
        log.warning("dpagent node %d started (%d block(s))", config.node.id, len(config.blocks))
        await self._stopping.wait()
        return await self._shutdown()

    def _reload_on_signal(self) -> None:
        task = self.loop.create_task(self.configuration.reload())
        # The loop keeps only weak references to tasks.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shutdown(self) -> bool:
        self.notifier.stopping()
        self.pump.events([Shutdown()])
        if not await self.runner.drain(STOP_TIMEOUT):
            log.error("release did not finish within %.0f s", STOP_TIMEOUT)
        left = sorted(self.runner.held)
        if left:
            log.error("stopping with block(s) %s still in the kernel; exiting unclean for `dpagent cleanup`",
                      ", ".join(left))
        self.runner.close()
        if self.sync is not None:
            self.sync.close()
        self.pump.close()
        self.monitor.close()
        for port in self.ports.values():
            port.close()
        await self.control.close()
        if self.metrics is not None:
            # Off the loop: a scrape in progress waits for the loop to answer it.
            await self.loop.run_in_executor(None, self.metrics.close)
        for step in self.runner.steps.values():
            await step.close()
        for pool in self.workers.values():
            pool.shutdown(wait=True)
        log.warning("dpagent stopped")
        return not left
