"""Inputs the runtime feeds into the election core, besides raw heartbeat bytes.

Every event is a small frozen value; the core never asks for anything, it is told.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class LinkRole(Enum):
    BLOCK = "block"
    HEARTBEAT = "heartbeat"


@dataclass(frozen=True)
class LinkChanged:
    """An interface the node depends on went up or down (or was found missing)."""

    link: str
    role: LinkRole
    up: bool
    reason: str = ""


@dataclass(frozen=True)
class CarrierLost:
    """A heartbeat link lost carrier: nothing can be heard on it any more.

    On a direct cable that is what the death of the node at the other end looks
    like, seen within milliseconds instead of a dead interval.
    """

    link: str


@dataclass(frozen=True)
class LoopStalled:
    """The runtime's own event loop ran `lag` seconds late (self-fencing input)."""

    lag: float


class AdminVerb(Enum):
    FAILOVER = "failover"
    MAINTENANCE_ON = "maintenance_on"
    MAINTENANCE_OFF = "maintenance_off"


@dataclass(frozen=True)
class AdminCommand:
    verb: AdminVerb


@dataclass(frozen=True)
class Shutdown:
    """Graceful stop (SIGTERM): a master resigns so the peer need not wait."""


Event = LinkChanged | CarrierLost | LoopStalled | AdminCommand | Shutdown
