"""Decisions the core hands to the runtime to carry out, one block at a time.

A block is the unit the dataplane moves: the runtime runs the block's takeover
plan (core.plan) for a TakeBlock and its release plan for a ReleaseBlock.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.states import State


@dataclass(frozen=True)
class SendFrame:
    """Send these bytes on every heartbeat link."""

    data: bytes


@dataclass(frozen=True)
class TakeBlock:
    """Run the block's takeover plan: make it serve here and tell the neighbours."""

    name: str
    reason: str


@dataclass(frozen=True)
class ReleaseBlock:
    """Run the block's release plan: stop answering for it here."""

    name: str
    reason: str


@dataclass(frozen=True)
class Announce:
    """Tell the neighbours again where a block that is already held lives."""

    name: str
    reason: str


@dataclass(frozen=True)
class OwnBuckets:
    """An active/active block held here: accept exactly these flow buckets of it now."""

    name: str
    buckets: frozenset[int]
    reason: str


@dataclass(frozen=True)
class StateChanged:
    old: State
    new: State
    reason: str


Action = SendFrame | TakeBlock | ReleaseBlock | Announce | OwnBuckets | StateChanged
