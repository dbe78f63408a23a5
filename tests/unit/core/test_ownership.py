"""agent.core.ownership, case by case: targets, a handover, a partition and its heal, restarts."""

from __future__ import annotations

import pytest

from agent.core.ownership import BlockOwnership, View, targets
from test_ownership_properties import DEAD, Cluster, build

BUCKETS = 256


def test_targets_spread_by_weight_and_a_leave_moves_only_the_leavers_buckets() -> None:
    three = targets("ext", {1: 1.0, 2: 1.0, 3: 2.0}, BUCKETS)
    share = {n: three.count(n) / BUCKETS for n in (1, 2, 3)}
    assert abs(share[3] - 0.5) < 0.1 and abs(share[1] - 0.25) < 0.1
    two = targets("ext", {1: 1.0, 3: 2.0}, BUCKETS)
    assert all(two[b] == three[b] for b in range(BUCKETS) if three[b] != 2)
    # Weight 0 (maintenance) is no member; no member at all owns nothing.
    assert targets("ext", {1: 1.0, 2: 0.0}, 4) == (1, 1, 1, 1)
    assert targets("ext", {}, 2) == (None, None)
    # Another block spreads differently: one node is not every block's first choice.
    assert targets("int", {1: 1.0, 2: 1.0, 3: 2.0}, BUCKETS) != three


def run(cluster: Cluster, rounds: int) -> None:
    for _ in range(rounds):
        cluster.tick()


def test_a_partition_leaves_each_side_its_view_and_the_heal_converges() -> None:
    cluster = build(2, 16, weighted=False, seed=1)
    run(cluster, 2 * DEAD + 6)
    settled = cluster.owners()
    assert all(len(settled[b]) == 1 for b in range(16))
    cluster.cut = {frozenset((0, 1))}
    run(cluster, 2 * DEAD + 4)
    # Each side owns every bucket, as CLUSTERIP would with each node alone.
    assert all(cluster.owners()[b] == {0, 1} for b in range(16))
    cluster.cut = set()
    run(cluster, 3)
    assert cluster.owners() == settled


def test_a_restarted_peer_is_heard_afresh_and_stale_views_are_ignored() -> None:
    node = BlockOwnership("ext", 1, 8)
    old = View(2, epoch=5, generation=9, weight=1.0, owned=frozenset({3}), claiming=frozenset())
    assert node.hear(old)
    assert not node.hear(View(2, 5, 8, 1.0, frozenset(), frozenset()))
    # A new run starts its generations again: its epoch says it is newer.
    assert node.hear(View(2, 6, 0, 1.0, frozenset(), frozenset()))
    # The same generation again is news only if it has seen more of ours.
    assert not node.hear(View(2, 6, 0, 1.0, frozenset(), frozenset()))
    assert node.hear(View(2, 6, 0, 1.0, frozenset(), frozenset(), seen={1: (0, 0)}))
    assert not node.hear(View(1, 9, 9, 1.0, frozenset(), frozenset()))


def test_alone_a_node_owns_every_bucket_at_once_and_gives_all_up_in_maintenance() -> None:
    node = BlockOwnership("ext", 1, 8)
    assert node.step(live=()) and node.owned == set(range(8))
    assert node.step(live=(), serving=False) and node.owned == set() and node.view().weight == 0.0
    assert node.moves == 16


def test_a_claim_waits_for_every_live_peer_to_acknowledge_it() -> None:
    a, b = BlockOwnership("ext", 1, 4), BlockOwnership("ext", 2, 4)
    b.hear(a.view())
    a.hear(b.view())
    a.step(live={2})
    mine = {x for x in range(4) if targets("ext", {1: 1.0, 2: 1.0}, 4)[x] == 1}
    assert set(a.claiming) == mine and not a.owned
    a.step(live={2})
    assert not a.owned, "no acknowledgement from node 2 yet"
    b.hear(a.view())
    b.step(live={1})
    a.hear(b.view())
    a.step(live={2})
    assert a.owned == mine


@pytest.mark.parametrize("buckets, weight", [(0, 1.0), (1 << 17, 1.0), (8, -1.0), (8, 1e9)])
def test_bad_settings_are_refused(buckets: int, weight: float) -> None:
    with pytest.raises(ValueError):
        BlockOwnership("ext", 1, buckets, weight)


def test_a_view_never_owns_and_claims_one_bucket_and_weights_travel_in_thousandths() -> None:
    node = BlockOwnership("ext", 1, 8, weight=0.0014)
    assert node.weight == 0.001
    node.claiming[3] = 1
    view = node.view(applied={3})
    assert 3 in view.owned and 3 not in view.claiming


def test_a_live_peer_not_heard_yet_holds_back_every_gain() -> None:
    node = BlockOwnership("ext", 1, 8)
    assert not node.step(live={2}) and not node.owned and not node.claiming
    node.hear(View(2, 1, 1, 1.0, frozenset(), frozenset()))
    assert node.step(live={2}) and node.claiming
