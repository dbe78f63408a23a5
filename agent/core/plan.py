"""The order of a block's takeover and release, as data.

Each line names one dataplane facility. Steps marked `before_traffic` must
finish before the block may carry traffic here (later: connection state
replayed before the filter gate opens, the gate open before the addresses are
local); the others run behind it, once every block is serving, so that a small
block never waits for a big block's announcement. A new kernel facility is one
more line in TAKEOVER. A release runs the same steps in the opposite order.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    facility: str
    before_traffic: bool
    # Run again, alone, when the core asks for a held block to be announced again.
    announces: bool = False


TAKEOVER: tuple[Step, ...] = (
    Step("gate", before_traffic=True),                      # nftables: the block's lease, opened
    Step("addresses", before_traffic=True),                 # AnyIP routes, IPv6 interface addresses
    Step("announce", before_traffic=False, announces=True),  # gratuitous ARP / unsolicited NA rounds
)


def takeover(facilities: Collection[str]) -> tuple[Step, ...]:
    """The takeover steps of a block served by these facilities, in order."""
    return tuple(step for step in TAKEOVER if step.facility in facilities)


def release(facilities: Collection[str]) -> tuple[Step, ...]:
    """The release steps: announcing stops first, the addresses go last."""
    return tuple(reversed(takeover(facilities)))


def reannounce(facilities: Collection[str]) -> tuple[Step, ...]:
    return tuple(step for step in takeover(facilities) if step.announces)


def phases(steps: tuple[Step, ...]) -> tuple[tuple[Step, ...], tuple[Step, ...]]:
    """(the steps traffic waits for, the steps that may run behind it), each in order."""
    return (tuple(s for s in steps if s.before_traffic), tuple(s for s in steps if not s.before_traffic))
