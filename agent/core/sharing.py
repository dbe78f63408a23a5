"""Active/active blocks on one node: served while the node is a member, buckets by ownership.

An active/active block is held (gate open, addresses local) on every node that
serves: one in BACKUP or MASTER whose start-up quiet time is over. Which of
its flow buckets the node accepts is agent.core.ownership's decision, fed by
the views in the peers' heartbeat frames and by who the election counts live.
The election node (agent.core.election) calls this at every frame and advert;
the actions it returns are the runtime's to carry out: TakeBlock and
ReleaseBlock as for any block, and OwnBuckets for the buckets. What the kernel
holds comes back through `applied`, so a frame never advertises a release the
kernel has not made yet.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from agent.core.actions import Action, OwnBuckets, ReleaseBlock, TakeBlock
from agent.core.ownership import BlockOwnership
from agent.core.views import BlockView, block_id


@dataclass(frozen=True)
class SharedBlock:
    name: str
    buckets: int
    weight: float = 1.0


class Sharing:
    """The active/active blocks of one node."""

    def __init__(self, node_id: int, epoch: int, blocks: Collection[SharedBlock] = ()) -> None:
        self.node_id, self.epoch = node_id, epoch
        self._blocks: dict[str, BlockOwnership] = {}
        self._by_id: dict[int, str] = {}
        self._applied: dict[str, frozenset[int]] = {}
        self._decided: dict[str, frozenset[int]] = {}  # the buckets last handed to the runtime
        self._settings: dict[str, SharedBlock] = {}
        self.serving = False
        self.unknown_views = 0
        # What the last step decided with: a step with the same inputs changes nothing.
        self._last_live: frozenset[int] | None = None
        self._dirty: set[str] = set()
        # Something a peer waits to hear: our view changed, or a peer's did and we saw it.
        self._news = False
        self.set_blocks(blocks)

    def set_blocks(self, blocks: Collection[SharedBlock]) -> list[Action]:
        """The configured active/active blocks (start, reload). A block whose buckets or
        weight changed starts over; one that is gone is released."""
        actions: list[Action] = []
        wanted = {b.name: b for b in blocks}
        past: dict[str, int] = {}
        for name in list(self._blocks):
            if wanted.get(name) != self._settings[name]:
                if self.serving:
                    actions.append(ReleaseBlock(name, "reload: active/active block changed or removed"))
                past[name] = self._blocks[name].generation
                del self._blocks[name], self._settings[name]
                self._applied.pop(name, None)
                self._decided.pop(name, None)
        for name, block in wanted.items():
            if name not in self._blocks:
                # Past the old definition's generations: peers would take the new views for old
                # ones, and their acknowledgements of the old claims for acknowledgements of new.
                self._blocks[name] = BlockOwnership(name, self.node_id, block.buckets, block.weight, self.epoch,
                                                    past.get(name, -1) + 1)
                self._settings[name] = block
                self._dirty.add(name)
                if self.serving:
                    actions.append(TakeBlock(name, "reload: active/active block added"))
        self._by_id = {block_id(name): name for name in self._blocks}
        return actions

    def taken_again(self, name: str) -> None:
        """The runtime took the block again (a reload replaced it): it holds no bucket now,
        so the next step hands over the share again."""
        self._decided.pop(name, None)
        self._applied.pop(name, None)
        self._dirty.add(name)

    def views(self) -> tuple[BlockView, ...]:
        return tuple(BlockView(block_id(name), own.buckets, own.view(self._applied.get(name, ())))
                     for name, own in sorted(self._blocks.items()))

    def hear(self, node_id: int, views: Collection[BlockView]) -> None:
        """A peer's frame: the views of blocks we share; others are counted and ignored."""
        for item in views:
            name = self._by_id.get(item.block_id)
            own = self._blocks.get(name) if name is not None else None
            if own is None or item.buckets != own.buckets or item.view.node_id != node_id:
                self.unknown_views += 1
                continue
            known = own.peers.get(node_id)
            if own.hear(item.view):
                self._dirty.add(name)
                # A new generation from a peer wants our acknowledgement soon.
                if known is None or (known.epoch, known.generation) != (item.view.epoch, item.view.generation):
                    self._news = True

    def applied(self, name: str, buckets: Collection[int]) -> bool:
        """The kernel now accepts exactly these buckets of the block; True if the view to
        advertise changed (a release applied: peers may claim now)."""
        own = self._blocks.get(name)
        if own is None or self._applied.get(name, frozenset()) == frozenset(buckets):
            return False
        before = own.view(self._applied.get(name, ())).owned
        self._applied[name] = frozenset(buckets)
        if own.view(self._applied[name]).owned == before:
            return False
        own.touch()
        return True

    def step(self, live: Collection[int], serving: bool, reason: str) -> list[Action]:
        """Decide again, with the peers the election counts live and whether this node
        serves; the actions to carry out, in order."""
        actions: list[Action] = []
        if serving and not self.serving:
            actions.extend(TakeBlock(name, reason) for name in sorted(self._blocks))
            # A take owns nothing: the buckets come with the next OwnBuckets, even the same ones.
            self._decided.clear()
        live = frozenset(live)
        again = set(self._blocks) if (live, serving) != (self._last_live, self.serving) else self._dirty
        for name in sorted(again & set(self._blocks)):
            own = self._blocks[name]
            if own.step(live, serving):
                self._news = True
            if frozenset(own.owned) != self._decided.get(name, frozenset()):
                self._decided[name] = frozenset(own.owned)
                actions.append(OwnBuckets(name, self._decided[name], reason))
        # A step reaches what its inputs allow; claims go on when acknowledgements arrive.
        self._dirty = set()
        if self.serving and not serving:
            actions.extend(ReleaseBlock(name, reason) for name in sorted(self._blocks))
        self.serving, self._last_live = serving, live
        return actions

    def take_news(self) -> bool:
        """Whether a frame should go out now, not at the next advert: a claim waits for every
        peer's acknowledgement, and each costs an advert interval if it waits for the schedule.
        Only generations trigger it, never an acknowledgement alone, so it cannot ping-pong."""
        news, self._news = self._news, False
        return news

    def snapshot(self) -> dict:
        return {"serving": self.serving, "unknown_views": self.unknown_views, "blocks": {
            name: {"buckets": own.buckets, "weight": own.weight, "generation": own.generation,
                   "owned": sorted(own.owned), "claiming": sorted(own.claiming), "moves": own.moves,
                   "applied": sorted(self._applied.get(name, ())),
                   "owners": self._owners(own),
                   "peers": {str(p): {"generation": v.generation, "owned": len(v.owned), "weight": v.weight}
                             for p, v in sorted(own.peers.items())}}
            for name, own in sorted(self._blocks.items())}}

    def _owners(self, own: BlockOwnership) -> list[list[int]]:
        """Per bucket, the nodes that own it as this node last heard (itself included):
        one, or none while it moves, or two on the two sides of a partition."""
        holders = [(self.node_id, own.owned)] + [(p, v.owned) for p, v in sorted(own.peers.items())]
        return [sorted(n for n, owned in holders if b in owned) for b in range(own.buckets)]
