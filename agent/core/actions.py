"""Decisions the election core hands to the runtime to carry out."""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.states import State


@dataclass(frozen=True)
class SendFrame:
    """Send these bytes on every heartbeat link."""

    data: bytes


@dataclass(frozen=True)
class TakeBlocks:
    """Make every configured block local here and announce it."""

    reason: str


@dataclass(frozen=True)
class ReleaseBlocks:
    """Stop answering for every configured block."""

    reason: str


@dataclass(frozen=True)
class StateChanged:
    old: State
    new: State
    reason: str


Action = SendFrame | TakeBlocks | ReleaseBlocks | StateChanged
