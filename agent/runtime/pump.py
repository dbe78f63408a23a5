"""The event-loop adapter of the election core (aioquic's pattern).

Feed the core what happened, carry out what it produced, re-arm its one
`loop.call_at`. Frames go out at once; every other action goes to the daemon's
dispatcher. The timer's own lateness is the loop-stall measure the core uses to
fence itself, and the timer is the only place the systemd watchdog is pinged and
the kernel-side leases are refreshed from: if the adverts stop, so do both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from agent.core.actions import Action, SendFrame
from agent.core.election import Node
from agent.core.events import Event, LoopStalled
from agent.runtime.transitions import History

log = logging.getLogger("dpagent")


class CorePump:
    def __init__(self, loop: asyncio.AbstractEventLoop, node: Node, history: History, *,
                 stall_after: float, send: Callable[[bytes], None], dispatch: Callable[[Action], None],
                 watchdog: Callable[[float], None], tick: Callable[[], None]) -> None:
        self.loop = loop
        self.node = node
        self._history = history
        self._stall_after = stall_after
        self._send = send
        self._dispatch = dispatch
        self._watchdog = watchdog
        self._tick = tick
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: float | None = None
        self._last_send: float | None = None
        self.max_lag = 0.0
        self.stalls = 0

    def start(self) -> None:
        self.node.start(self.loop.time())
        self.process()

    def datagram(self, data: bytes, link: str) -> None:
        self.node.receive_datagram(data, link, self.loop.time())
        self.process()

    def events(self, events: Iterable[Event]) -> None:
        now = self.loop.time()
        for event in events:
            self.node.receive(event, now)
        self.process()

    def process(self) -> None:
        """Carry out what the core decided, then re-arm its one timer."""
        for action in self.node.actions():
            if isinstance(action, SendFrame):
                self._note_send()
                self._send(action.data)
            else:
                self._dispatch(action)
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_due = None, None

    def _note_send(self) -> None:
        """Track the worst gap between two frames sent: takeover work must not widen it."""
        now = self.loop.time()
        current = self._history.current
        if self._last_send is not None and current is not None:
            current.max_advert_gap = max(current.max_advert_gap, now - self._last_send)
        self._last_send = now

    def _arm(self) -> None:
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
        due = self._timer_due or now
        if now < due:
            # The loop's timers have millisecond resolution and may fire a little
            # early: wait for the due time itself (the core's times are exact: a
            # preempt_delay is never cut short), without a tick for nothing.
            self._timer = self.loop.call_at(due, self._on_timer)
            return
        lag = now - due
        self._timer, self._timer_due = None, None
        try:
            self.max_lag = max(self.max_lag, lag)
            # A timer late by more than one advert interval means the loop itself stalled.
            if lag > self._stall_after:
                self.stalls += 1
                log.warning("event loop stalled %.3f s", lag)
                self.node.receive(LoopStalled(lag), now)
            self.node.handle_timer(now)
            self.process()
        finally:
            self._arm()
        # After the core: a stall long enough to matter has fenced it by now, and a
        # block it released is no longer refreshed.
        self._tick()
        self._watchdog(now)
