"""Waiting on a condition with a deadline, never a fixed sleep: the one helper the netns tests share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
POLL = 0.02


def wait_for(check: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """The first true value of check(), polled until the deadline; an AssertionError after it."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(POLL)
    return value
