"""How much of a peer's adverts are lost, and the dead interval that keeps false takeovers rare.

A takeover starts after `k` adverts in a row are missed. With a loss rate p,
runs of k misses start about `p**k * (1 - p) / interval` times a second: with
p = 30 % and k = 3, every 1.9 s (what keepalived and ucarp do). Solving for
the smallest k that keeps that rarer than one per `false_takeover_every`
seconds gives the dead interval the receiver uses for that peer, never below
the configured multiplier and never above the ceiling.

The loss is read from the sender's sequence numbers (a gap is that many
frames lost on every link) by two moving averages: a fast one that widens the
interval at the first losses, and a slow one that holds a steady estimate
through the fast one's dips. The larger of the two is used, and one interval
is added as a margin for the estimate's own error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FAST = 0.1     # weight of each frame in the fast average: a single miss moves it to 10 %
SLOW = 0.005   # ~200 frames of memory
# Below this the configured multiplier already meets any sane target.
NEGLIGIBLE = 1e-4
# A gap larger than this is a restart or a long outage, not loss to learn from.
MAX_GAP = 10_000


@dataclass
class LossEstimate:
    fast: float = 0.0
    slow: float = 0.0
    last_seq: int | None = None
    received: int = 0
    missed: int = 0

    @property
    def rate(self) -> float:
        return max(self.fast, self.slow)

    def observe(self, seq: int) -> None:
        """The first copy of frame `seq` arrived, on any link."""
        if self.last_seq is not None and seq <= self.last_seq:
            return  # late or duplicate: the gap it left was already counted
        gap = 0 if self.last_seq is None else seq - self.last_seq - 1
        self.last_seq = seq
        if gap > MAX_GAP:
            return
        self.missed += gap
        self.received += 1
        for weight in ("fast", "slow"):
            alpha = FAST if weight == "fast" else SLOW
            value = getattr(self, weight)
            # `gap` misses, then one frame received, each step of the average in closed form.
            value = 1 - (1 - value) * (1 - alpha) ** gap
            setattr(self, weight, value * (1 - alpha))

    def restart(self) -> None:
        """The sender restarted (new epoch): its numbering starts over."""
        self.last_seq = None


def dead_multiplier(loss: float, interval: float, configured: int, ceiling: float, every: float) -> int:
    """Missed adverts to wait before declaring a peer dead, for a measured loss rate."""
    most = max(configured, int(ceiling / interval))
    if loss < NEGLIGIBLE:
        return configured
    if loss >= 1:
        return most
    # p**k * (1 - p) / interval <= 1 / every
    needed = math.log(interval / (every * (1 - loss))) / math.log(loss)
    return min(most, max(configured, math.ceil(needed) + 1))
