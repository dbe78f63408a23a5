"""A bounded history of state transitions, each with its ordered, timed steps.

This is what `agentctl status` shows an operator after a failover: why the node
moved, when, and how long every step (routes, addresses, announcements) took.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger("dpagent")

HISTORY = 32


@dataclass
class Step:
    name: str
    started: float
    seconds: float = 0.0
    done: bool = False
    ok: bool = True
    detail: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "started": self.started,
            "seconds": round(self.seconds, 6),
            "done": self.done,
            "ok": self.ok,
            "detail": self.detail,
        }


@dataclass
class Transition:
    old: str
    new: str
    reason: str
    at: float
    steps: list[Step] = field(default_factory=list)
    # Worst gap between two heartbeat frames sent while this transition was current.
    max_advert_gap: float = 0.0

    def as_dict(self) -> dict:
        return {
            "old": self.old,
            "new": self.new,
            "reason": self.reason,
            "at": self.at,
            "steps": [s.as_dict() for s in self.steps],
            "max_advert_gap_s": round(self.max_advert_gap, 6),
        }


class StepTimer:
    """Context manager timing one step of a transition.

    An Exception inside the step (a netlink socket error, a sender that cannot
    open its socket) marks the step failed, is logged, and goes no further: one
    failing block must not stop the takeover or release of the others.
    """

    def __init__(self, transition: Transition, name: str) -> None:
        self._step = Step(name, time.time())
        self._t0 = 0.0
        transition.steps.append(self._step)

    def __enter__(self) -> Step:
        self._t0 = time.perf_counter()
        return self._step

    def __exit__(self, kind, exc, tb) -> bool:
        self._step.seconds = time.perf_counter() - self._t0
        self._step.done = True
        if not isinstance(exc, Exception):
            log.info("step %s: %.3f ms%s", self._step.name, self._step.seconds * 1000,
                     "" if self._step.ok else " (failed)")
            return False
        self._step.ok = False
        self._step.detail["error"] = f"{kind.__name__}: {exc}"
        log.error("step %s failed", self._step.name, exc_info=(kind, exc, tb))
        return True


class History:
    def __init__(self, size: int = HISTORY) -> None:
        self._items: deque[Transition] = deque(maxlen=size)

    @property
    def current(self) -> Transition | None:
        """The transition that work is filed under now: the latest state change or reload."""
        return self._items[-1] if self._items else None

    def begin(self, old: str, new: str, reason: str) -> Transition:
        item = Transition(old, new, reason, time.time())
        self._items.append(item)
        return item

    def as_list(self) -> list[dict]:
        return [t.as_dict() for t in self._items]
