"""Active/active: which live node owns each flow bucket of a block, never two at once.

Every node computes the same target owner for each bucket by weighted
rendezvous (highest random weight) hashing over the members it hears: a
member leaving moves only its own buckets, one joining takes about 1/N, and
nothing else moves. Targets are only where buckets should go; ownership moves
by release-then-claim, confirmed through the heartbeat. Each node advertises a
View of a block: a generation, the buckets it owns, those it claims, and the
latest generation it has heard from each peer. A node

- releases at once a bucket whose target is another node, or that a live peer
  with a higher score owns too (what a healed partition leaves);
- claims a bucket whose target it is once no live peer owns it, and no live
  peer with a higher score claims it;
- owns a claimed bucket once every live peer has advertised a view that has
  seen the claim and neither owns the bucket nor claims it with a higher score.

So two nodes that hear each other never own a bucket together: a claim waits
for every peer's acknowledgement, and of two crossing claims the higher score
wins. The one other way to gain a bucket is a peer going silent for a dead
interval (the caller stops listing it as live): its kernel-side lease has
fenced its node by then, even if its agent hangs. A partition lets each side
own its view's buckets, as CLUSTERIP would; once the sides hear each other,
the lower-scored duplicate owner releases in its next step.

Views a node advertises are what the caller applied to the kernel plus what it
wants (`advertised`), so a release is never advertised before the kernel drops
the bucket. Sans-I/O: no clock, no sockets; the caller says who is live.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

MAX_WEIGHT = 1000.0


@dataclass(frozen=True)
class View:
    """What a node advertises about one block."""

    node_id: int
    # The sender's run (its heartbeat epoch) and its change count within that run.
    epoch: int
    generation: int
    weight: float
    owned: frozenset[int]
    claiming: frozenset[int]
    # The latest (epoch, generation) of each peer's view this node had heard when it made this one.
    seen: Mapping[int, tuple[int, int]] = field(default_factory=dict)


@lru_cache(maxsize=1 << 16)
def score(block: str, node_id: int, weight: float, bucket: int) -> float:
    """The node's weighted rendezvous score for the bucket: higher wins; weight 0 never does.
    Every node computes it alike (BLAKE2b, not Python's salted hash)."""
    if weight <= 0:
        return -math.inf
    digest = hashlib.blake2b(struct.pack("!IIH", node_id, bucket, len(block)) + block.encode(), digest_size=8)
    # A uniform value in (0, 1), never 0 or 1: -weight / ln(u) is the weighted HRW score.
    u = (int.from_bytes(digest.digest(), "big") + 0.5) / 2.0**64
    return -weight / math.log(u)


def targets(block: str, members: Mapping[int, float], buckets: int) -> tuple[int | None, ...]:
    """The target owner of each bucket among `members` (node id -> weight); None where no
    member has a positive weight."""
    return _targets(block, tuple(sorted((n, w) for n, w in members.items() if w > 0)), buckets)


@lru_cache(maxsize=64)
def _targets(block: str, live: tuple[tuple[int, float], ...], buckets: int) -> tuple[int | None, ...]:
    if not live:
        return (None,) * buckets
    return tuple(max(live, key=lambda m: (score(block, m[0], m[1], b), m[0]))[0] for b in range(buckets))


class BlockOwnership:
    """One node's side of one block's buckets."""

    def __init__(self, block: str, node_id: int, buckets: int, weight: float = 1.0, epoch: int = 0,
                 generation: int = 0) -> None:
        if not 1 <= buckets <= 1 << 16:
            raise ValueError(f"buckets must be 1..65536, not {buckets}")
        if not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight must be 0..{MAX_WEIGHT:g}, not {weight}")
        # Thousandths, as the frame carries it: every node must score this node alike.
        self.block, self.node_id, self.buckets, self.weight = block, node_id, buckets, round(weight * 1000) / 1000
        # A block redefined by a reload starts past its old generations, in the same epoch.
        self.epoch, self.generation = epoch, generation
        self.owned: set[int] = set()
        self.claiming: dict[int, int] = {}  # bucket -> the generation that first advertised the claim
        self.peers: dict[int, View] = {}
        self.serving = True
        self.moves = 0  # buckets gained or given up, since start

    # --- what the heartbeat brings and carries -------------------------------------------

    def hear(self, view: View) -> bool:
        """A peer's view of this block; one older than we have is ignored (reordered), one of
        a new run of the peer replaces what its old run said. A view changes generation only
        when what it owns or claims changes; between, what it has seen of ours still grows."""
        if view.node_id == self.node_id:
            return False
        known = self.peers.get(view.node_id)
        if known is not None:
            if (view.epoch, view.generation) < (known.epoch, known.generation):
                return False
            # The same generation owns and claims the same: what can be newer is how much of
            # ours it has seen, the one entry of `seen` this node reads.
            if (view.epoch, view.generation) == (known.epoch, known.generation) and (
                    view.seen.get(self.node_id, (-1, -1)) <= known.seen.get(self.node_id, (-1, -1))):
                return False
        self.peers[view.node_id] = view
        return True

    def forget(self, node_id: int) -> None:
        """The peer is gone (dead interval, or left the cluster): its view no longer counts."""
        self.peers.pop(node_id, None)

    def view(self, applied: Collection[int] = ()) -> View:
        """This node's view to advertise: owned includes what the kernel still holds (`applied`),
        so a release is advertised only once the kernel has dropped the bucket."""
        owned = frozenset(self.owned) | frozenset(applied)
        # A bucket the kernel still holds is advertised owned, not claimed as well.
        return View(self.node_id, self.epoch, self.generation, self.weight if self.serving else 0.0,
                    owned, frozenset(self.claiming) - owned, {p: (v.epoch, v.generation) for p, v in self.peers.items()})

    def touch(self) -> None:
        """What the view says changed without a decision (the kernel applied one): a new
        generation, so that peers take the view in."""
        self.generation += 1

    # --- the decision --------------------------------------------------------------------

    def step(self, live: Collection[int], serving: bool = True) -> bool:
        """Decide with the views of the `live` peers (the others are forgotten); `serving`
        False (maintenance, shutdown, fault) gives every bucket up. True if anything changed."""
        for gone in set(self.peers) - set(live):
            self.forget(gone)
        peers = list(self.peers.values())
        # A live peer whose view we lack may own anything: gain nothing until it is heard.
        unheard = any(p not in self.peers for p in live)
        before = (set(self.owned), dict(self.claiming), self.serving)
        self.serving = serving
        members = {v.node_id: v.weight for v in peers} | {self.node_id: self.weight if serving else 0.0}
        target = targets(self.block, members, self.buckets)

        # Give up what should go elsewhere, and what a better-scored live peer also owns.
        for b in list(self.owned):
            if target[b] != self.node_id or any(b in v.owned and self._beats(v, b) for v in peers):
                self.owned.discard(b)
        # Withdraw claims that lost their target or lost to a better-scored claim.
        for b in list(self.claiming):
            if target[b] != self.node_id or any(b in v.claiming and self._beats(v, b) for v in peers):
                del self.claiming[b]
        # New claims: this node's buckets that no live peer owns or claims better. They are
        # first advertised in the next generation.
        claim_at = self.generation + 1
        for b in range(0 if unheard else self.buckets):
            if target[b] == self.node_id and b not in self.owned and b not in self.claiming and not any(
                    b in v.owned or (b in v.claiming and self._beats(v, b)) for v in peers):
                self.claiming[b] = claim_at
        # A claim becomes ownership once every live peer has seen it and keeps off the bucket
        # (with no live peer, at once: the dead interval has already fenced the others).
        for b, since in list(self.claiming.items()) if not unheard else ():
            if all(v.seen.get(self.node_id, (-1, -1)) >= (self.epoch, since) and b not in v.owned and not (
                    b in v.claiming and self._beats(v, b)) for v in peers):
                del self.claiming[b]
                self.owned.add(b)
        changed = (self.owned, self.claiming, self.serving) != before
        if changed:
            self.generation += 1
            self.moves += len(self.owned ^ before[0])
        return changed

    def _score(self, bucket: int) -> tuple[float, int]:
        return score(self.block, self.node_id, self.weight, bucket), self.node_id

    def _peer_score(self, view: View, bucket: int) -> tuple[float, int]:
        return score(self.block, view.node_id, view.weight, bucket), view.node_id

    def _beats(self, view: View, bucket: int) -> bool:
        """Whether the peer's claim on the bucket outranks ours (ties: the higher node id)."""
        return self._peer_score(view, bucket) > self._score(bucket)
