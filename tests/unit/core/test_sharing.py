"""Active/active through the election: Nodes with a shared block over the in-memory cluster.

The harness (conftest.Cluster) applies every OwnBuckets at once and reports it
back, as the runtime does; `no_bucket_twice` runs after every step of the clock.
"""

from __future__ import annotations

from agent.core.election import ElectionConfig
from agent.core.events import AdminCommand, AdminVerb
from agent.core.ownership import targets
from agent.core.sharing import SharedBlock
from agent.core.states import State
from agent.core.wire import decode
from conftest import KEYS, Cluster

BUCKETS = 64
SHARED = (SharedBlock("web", BUCKETS),)
INTERVAL = 0.05


def cluster(n: int, **kw) -> Cluster:
    c = Cluster([ElectionConfig(i, 200 - i) for i in range(1, n + 1)], shared=SHARED, **kw)
    c.start()
    return c


def owners(c: Cluster) -> dict[int, set[int]]:
    found: dict[int, set[int]] = {}
    for node_id, member in c.members.items():
        for b in member.buckets.get("web", ()):
            found.setdefault(b, set()).add(node_id)
    return found


def no_bucket_twice(c: Cluster) -> None:
    """No bucket accepted by two live nodes that have heard each other since their last change."""
    twice = {b: held for b, held in owners(c).items() if len(held) > 1}
    assert not twice, f"t={c.now:.3f}: {twice}"


def whole(c: Cluster) -> bool:
    live = {n for n, m in c.members.items() if m.up}
    target = targets("web", {n: 1.0 for n in live}, BUCKETS)
    return owners(c) == {b: {target[b]} for b in range(BUCKETS)}


def test_three_nodes_split_the_buckets_each_owned_once() -> None:
    c = cluster(3)
    c.run_for(1.0, check=no_bucket_twice)
    assert whole(c)
    counts = [len(c.members[n].buckets["web"]) for n in (1, 2, 3)]
    assert sum(counts) == BUCKETS and min(counts) > BUCKETS / 6
    # Every node holds the block; the election still has one master for the others.
    assert all("web" in c.members[n].holds for n in (1, 2, 3)) and c.masters() == [1]
    # Version-2 frames carry the views.
    assert decode(c.sent[-1][2], KEYS).views


def test_a_dead_node_s_buckets_go_to_the_survivors_and_nothing_else_moves() -> None:
    c = cluster(3)
    c.run_for(1.0, check=no_bucket_twice)
    before = {n: set(c.members[n].buckets["web"]) for n in (1, 2, 3)}
    c.kill(2)
    c.run_for(1.0, check=no_bucket_twice)
    assert whole(c)
    for n in (1, 3):
        assert before[n] <= set(c.members[n].buckets["web"]), "a survivor lost a bucket"


def test_a_joining_node_takes_its_share_without_a_bucket_owned_twice() -> None:
    c = cluster(3)
    c.kill(3)
    c.run_for(1.0, check=no_bucket_twice)
    assert whole(c)
    c.restart(3, graceful=False)
    # It listens for a dead interval before it claims anything.
    c.run_for(2 * INTERVAL, check=no_bucket_twice)
    assert not c.members[3].buckets.get("web")
    c.run_for(1.0, check=no_bucket_twice)
    assert whole(c) and len(c.members[3].buckets["web"]) > BUCKETS / 6


def test_maintenance_hands_a_node_s_buckets_to_the_others_first() -> None:
    c = cluster(2)
    c.run_for(1.0, check=no_bucket_twice)
    c.event(2, AdminCommand(AdminVerb.MAINTENANCE_ON))
    c.run_for(0.5, check=no_bucket_twice)
    assert c.states()[2] is State.MAINTENANCE
    assert owners(c) == {b: {1} for b in range(BUCKETS)}
    assert "web" not in c.members[2].holds
    c.event(2, AdminCommand(AdminVerb.MAINTENANCE_OFF))
    c.run_for(1.0, check=no_bucket_twice)
    assert whole(c)


def test_lossy_links_still_never_own_a_bucket_twice() -> None:
    c = cluster(3, seed=7)
    c.loss = 0.3
    c.run_for(3.0, check=no_bucket_twice)
    c.loss = 0.0
    c.run_for(1.0, check=no_bucket_twice)
    assert whole(c)


def test_a_recovered_node_holds_off_its_share_for_its_preempt_delay() -> None:
    c = Cluster([ElectionConfig(1, 199), ElectionConfig(2, 198, preempt_delay=0.6)], shared=SHARED)
    c.start()
    c.run_for(0.5, check=no_bucket_twice)
    assert not c.members[2].buckets.get("web") and len(c.members[1].buckets["web"]) == BUCKETS
    c.run_for(1.0, check=no_bucket_twice)
    assert whole(c)


def test_a_reloaded_block_starts_past_its_old_generations() -> None:
    from agent.core.sharing import Sharing
    sharing = Sharing(1, epoch=5, blocks=SHARED)
    sharing.step(live=(), serving=True, reason="start")
    before = sharing.views()[0].view.generation
    sharing.set_blocks((SharedBlock("web", BUCKETS, weight=3.0),))
    assert sharing.views()[0].view.generation > before
