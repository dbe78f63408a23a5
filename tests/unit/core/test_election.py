"""Scenario tests: two or three Nodes over the in-memory cluster (conftest.Cluster)."""

import pytest

from agent.core.actions import Announce, ReleaseBlock, SendFrame, StateChanged, TakeBlock
from agent.core.election import TRANSITIONS, ElectionConfig, Node
from agent.core.events import AdminCommand, AdminVerb, CarrierLost, LinkChanged, LinkRole, LoopStalled, Shutdown
from agent.core.states import State
from agent.core.wire import Frame, FrameType, KeyRing, decode, encode

INTERVAL = 0.05
DEAD = 3 * INTERVAL


def two(cluster_class, preempt=True, preempt_delay=0.0, **kw):
    return cluster_class([
        ElectionConfig(1, 200, preempt=preempt, preempt_delay=preempt_delay),
        ElectionConfig(2, 100, preempt=preempt, preempt_delay=preempt_delay),
    ], **kw)


def settled(cluster_class, **kw):
    c = two(cluster_class, **kw)
    c.start()
    c.run_for(1.0)
    assert c.masters() == [1]
    return c


def test_table_only_names_real_states():
    assert all(isinstance(s, State) and isinstance(n, State) for (s, _), n in TRANSITIONS.items())


def test_startup_of_two_nodes_elects_the_better_one(cluster_class):
    c = two(cluster_class)
    c.start()
    c.run_until(DEAD - 0.001)
    assert c.masters() == []
    c.run_until(DEAD + INTERVAL)
    assert c.masters() == [1]
    c.run_for(2.0)
    assert c.masters() == [1]
    assert [sc.new for sc in c.transitions(2)] == [State.BACKUP]
    first = c.transitions(1)[-1]
    assert first.new is State.MASTER and "no master heard" in first.reason


def test_equal_priority_higher_node_id_wins(cluster_class):
    c = cluster_class([ElectionConfig(1, 100), ElectionConfig(2, 100)])
    c.start()
    c.run_for(1.0)
    assert c.masters() == [2]


def test_startup_when_the_worse_node_starts_first_then_preempted(cluster_class):
    c = two(cluster_class)
    c.start(2)
    c.run_for(1.0)
    assert c.masters() == [2]
    c.start(1)
    c.run_for(0.01)
    assert c.masters() == [1]
    assert "preempt: 1 outranks master 2" in c.transitions(1)[-1].reason


def test_kill_master_backup_takes_over_within_dead_interval_plus_one(cluster_class):
    c = settled(cluster_class)
    killed_at = c.now
    c.kill(1)
    c.run_until(killed_at + DEAD + INTERVAL)
    assert c.masters() == [2]
    when, node, change = [e for e in c.log if e[1] == 2][-1]
    assert change.new is State.MASTER
    assert when - killed_at <= DEAD + 1e-9
    assert "peer 1 (prio 200) silent for" in change.reason


def test_resign_makes_backup_master_at_once(cluster_class):
    c = settled(cluster_class)
    c.event(1, AdminCommand(AdminVerb.FAILOVER))
    assert c.node(1).state is State.BACKUP
    c.run_for(c.latency)  # the RESIGN frame lands
    assert c.masters() == [2]
    assert c.transitions(2)[-1].reason == "resign from 1"
    c.run_for(3.0)
    assert c.masters() == [2], "the resigning node must not preempt straight back"
    assert c.node(1).snapshot(c.now)["preempt"]["suppressed"] is True


def test_failover_suppression_ends_when_the_new_master_dies(cluster_class):
    c = settled(cluster_class)
    c.event(1, AdminCommand(AdminVerb.FAILOVER))
    c.run_for(1.0)
    c.kill(2)
    c.run_for(DEAD + INTERVAL)
    assert c.masters() == [1]
    assert c.node(1).snapshot(c.now)["preempt"]["suppressed"] is False


def test_shutdown_resigns_and_goes_silent(cluster_class):
    c = settled(cluster_class)
    c.event(1, Shutdown())
    assert c.node(1).state is State.INIT
    assert c.node(1).get_timer() is None
    assert c.node(1).actions() == []
    c.run_for(c.latency)
    assert c.masters() == [2]
    sent_after = [s for s in c.sent if s[1] == 1 and s[0] > c.now - c.latency]
    assert all(decode(d, c.keys).kind is FrameType.RESIGN for _, _, d in sent_after)


def test_shutdown_resigns_then_files_the_release_under_the_state_change():
    node = Node(ElectionConfig(1, 100), KeyRing(((1, b"k" * 32),)), 1, ("ext", "ext6"))
    node.start(0.0)
    node.handle_timer(DEAD)
    assert node.state is State.MASTER
    node.actions()
    node.receive(Shutdown(), 1.0)
    acts = node.actions()
    assert [type(a) for a in acts] == [SendFrame, StateChanged, ReleaseBlock, ReleaseBlock]
    assert [a.name for a in acts[2:]] == ["ext", "ext6"]
    assert decode(acts[0].data, KeyRing(((1, b"k" * 32),))).state is State.INIT


@pytest.mark.parametrize("delay", [0.0, 0.5])
def test_preempt_on_with_delay(cluster_class, delay):
    c = two(cluster_class, preempt_delay=delay)
    c.start(2)
    c.run_for(1.0)
    c.start(1)
    c.run_for(delay - 0.01 if delay else 0.0)
    if delay:
        assert c.masters() == [2]
    c.run_for(0.02 + INTERVAL)
    assert c.masters() == [1]


def test_preempt_off_keeps_the_current_master(cluster_class):
    c = two(cluster_class, preempt=False)
    c.start(2)
    c.run_for(1.0)
    c.start(1)
    c.run_for(3.0)
    assert c.masters() == [2]
    assert [sc.new for sc in c.transitions(1)] == [State.BACKUP]


def test_maintenance(cluster_class):
    c = settled(cluster_class)
    c.event(1, AdminCommand(AdminVerb.MAINTENANCE_ON))
    assert c.node(1).state is State.MAINTENANCE
    c.run_for(c.latency)
    assert c.masters() == [2]
    c.run_for(2.0)
    assert c.node(1).state is State.MAINTENANCE
    assert c.node(2).snapshot(c.now)["peers"][0]["state"] == "MAINTENANCE"
    c.event(1, AdminCommand(AdminVerb.MAINTENANCE_OFF))
    assert c.node(1).state is State.BACKUP
    c.run_for(1.0)
    assert c.masters() == [1]  # preempt is on


def test_maintenance_off_while_link_down_goes_to_fault(cluster_class):
    c = settled(cluster_class)
    c.event(1, AdminCommand(AdminVerb.MAINTENANCE_ON))
    c.set_link(1, "ext0", False)
    assert c.node(1).state is State.MAINTENANCE
    c.event(1, AdminCommand(AdminVerb.MAINTENANCE_OFF))
    assert c.node(1).state is State.FAULT


def test_block_link_down_faults_and_recovers(cluster_class):
    c = settled(cluster_class)
    c.set_link(1, "ext0", False)
    assert c.node(1).state is State.FAULT
    assert "block link ext0 down: carrier lost" in c.transitions(1)[-1].reason
    c.run_for(c.latency)
    assert c.masters() == [2]
    c.run_for(1.0)
    assert c.node(1).state is State.FAULT
    c.set_link(1, "ext0", True)
    assert c.node(1).state is State.BACKUP
    c.run_for(1.0)
    assert c.masters() == [1]


def test_start_with_block_link_down_is_fault():
    node = Node(ElectionConfig(1, 100), KeyRing(((1, b"k" * 32),)), 1)
    node.receive(LinkChanged("ext0", LinkRole.BLOCK, False), 0.0)
    node.start(0.0)
    assert node.state is State.FAULT
    assert [a.new for a in node.actions() if isinstance(a, StateChanged)] == [State.FAULT]
    node.receive(LinkChanged("ext0", LinkRole.BLOCK, True), 1.0)
    assert node.state is State.BACKUP


def test_one_heartbeat_link_down_changes_nothing(cluster_class):
    c = settled(cluster_class)
    before = len(c.log)
    c.set_link(1, "hb0", False)
    c.run_for(2.0)
    assert c.masters() == [1]
    assert len(c.log) == before
    assert c.node(2).snapshot(c.now)["peers"][0]["links"] == ["hb1"]


def test_all_heartbeat_links_down_is_fault(cluster_class):
    c = settled(cluster_class)
    c.set_link(2, "hb0", False)
    c.set_link(2, "hb1", False)
    assert c.node(2).state is State.FAULT
    assert "all heartbeat links down (hb0, hb1)" in c.transitions(2)[-1].reason
    c.run_for(1.0)
    assert c.masters() == [1]
    c.set_link(2, "hb1", True)
    assert c.node(2).state is State.BACKUP


def test_self_fence_on_loop_stall(cluster_class):
    c = settled(cluster_class)
    c.stall(1, DEAD)
    c.run_for(DEAD + 0.001)
    assert c.node(1).state is State.BACKUP
    assert c.transitions(1)[-1].reason.startswith("self-fence: loop stalled 0.15")
    c.run_for(2.0)
    assert c.masters() == [2]


def test_stalled_backup_reads_its_backlog_before_taking_over(cluster_class):
    c = settled(cluster_class)
    c.now += 0.5  # both loops were frozen; the backup runs first and its timer is overdue
    c.event(2, LoopStalled(0.5))
    c.run_for(INTERVAL)
    assert c.masters() == [1]
    assert [sc.new for sc in c.transitions(2)] == [State.BACKUP]


def test_short_stall_does_not_fence(cluster_class):
    c = settled(cluster_class)
    c.event(1, LoopStalled(DEAD - INTERVAL - 0.001))
    assert c.node(1).state is State.MASTER


def test_wrong_key_frames_are_dropped_and_counted(cluster_class):
    c = settled(cluster_class)
    bad = KeyRing(((1, b"x" * 32),))
    forged = encode(Frame(FrameType.RESIGN, 1, State.BACKUP, 200, 50_000, 99, 10**6), bad)
    unknown = encode(Frame(FrameType.ADVERT, 3, State.MASTER, 254, 50_000, 1, 1), KeyRing(((7, b"x"),)))
    c.deliver(1, 2, forged)
    c.deliver(1, 2, unknown)
    c.deliver(1, 2, b"junk")
    c.run_for(1.0)
    assert c.masters() == [1]
    assert c.node(2).state is State.BACKUP
    assert c.node(2).snapshot(c.now)["drops"] == {"auth": 1, "key_id": 1, "short": 1}


def test_own_frames_reflected_back_are_dropped(cluster_class):
    c = settled(cluster_class)
    epoch = c.node(2).snapshot(c.now)["epoch"]
    mine = encode(Frame(FrameType.ADVERT, 2, State.MASTER, 254, 50_000, epoch, 5), c.keys)
    c.deliver(1, 2, mine)
    assert c.node(2).snapshot(c.now)["drops"] == {"own_id": 1}
    assert c.node(2).state is State.BACKUP


def test_a_duplicate_node_id_is_a_fault_until_the_other_node_goes_quiet(cluster_class):
    c = settled(cluster_class)
    other = c.node(2).snapshot(c.now)["epoch"] + 1
    impostor = encode(Frame(FrameType.ADVERT, 2, State.MASTER, 254, 50_000, other, 5), c.keys)
    c.deliver(1, 2, impostor)
    assert c.node(2).state is State.FAULT
    reason = c.node(2).snapshot(c.now)["last_transition"]["reason"]
    assert reason.startswith("duplicate node id 2: another node") and str(other) in reason
    c.run_for(DEAD / 2)
    assert c.node(2).state is State.FAULT
    c.run_for(DEAD)
    assert c.node(2).state is State.BACKUP
    assert c.masters() == [1]


def test_a_master_that_hears_a_lower_ranked_master_announces_again_once_per_second():
    keys = KeyRing(((1, b"k" * 32),))
    node = Node(ElectionConfig(2, 200), keys, 1, ("ext",))
    node.start(0.0)
    node.handle_timer(DEAD)
    assert node.state is State.MASTER
    node.actions()
    lower = [encode(Frame(FrameType.ADVERT, 1, State.MASTER, 100, 50_000, 7, seq), keys) for seq in range(3)]
    node.receive_datagram(lower[0], "hb0", DEAD + 0.1)
    assert [(type(a), a.name) for a in node.actions() if not isinstance(a, SendFrame)] == [(Announce, "ext")]
    node.receive_datagram(lower[1], "hb0", DEAD + 0.2)
    assert not [a for a in node.actions() if isinstance(a, Announce)]
    node.receive_datagram(lower[2], "hb0", DEAD + 1.2)
    assert [a.name for a in node.actions() if isinstance(a, Announce)] == ["ext"]
    assert node.state is State.MASTER


def test_a_master_announces_again_when_a_link_comes_back():
    node = Node(ElectionConfig(2, 200), KeyRing(((1, b"k" * 32),)), 1, ("ext",))
    node.receive(LinkChanged("hb0", LinkRole.HEARTBEAT, True, "up"), 0.0)
    node.start(0.0)
    node.handle_timer(DEAD)
    node.actions()
    node.receive(LinkChanged("hb0", LinkRole.HEARTBEAT, True, "no carrier"), DEAD + 0.1)
    assert not [a for a in node.actions() if isinstance(a, Announce)]
    node.receive(LinkChanged("hb0", LinkRole.HEARTBEAT, True, "up"), DEAD + 2)
    assert [a.name for a in node.actions() if isinstance(a, Announce)] == ["ext"]


def test_duplicates_via_two_links_are_counted_not_dropped(cluster_class):
    c = settled(cluster_class)
    snap = c.node(2).snapshot(c.now)
    received, dups = snap["counters"]["frames_received"], snap["counters"]["duplicates"]
    assert received > 0 and abs(dups - received) <= 1
    assert "replay" not in snap["drops"]
    assert snap["peers"][0]["links"] == ["hb0", "hb1"]


def test_replayed_old_frame_is_dropped(cluster_class):
    c = settled(cluster_class)
    c.run_for(5.0)  # more than 64 frames later: out of the window
    old = next(d for t, s, d in c.sent if s == 1 and decode(d, c.keys).state is State.BACKUP)
    c.deliver(1, 2, old)
    assert c.node(2).snapshot(c.now)["drops"] == {"replay": 1}
    assert c.masters() == [1]


def test_peer_restart_with_new_epoch_is_accepted(cluster_class):
    c = settled(cluster_class)
    c.restart(1)
    assert c.node(1).state is State.BACKUP
    c.run_for(c.latency)
    assert c.masters() == [2]  # the RESIGN of the old epoch handed over at once
    c.run_for(1.0)
    assert c.masters() == [1]
    assert c.node(2).snapshot(c.now)["peers"][0]["epoch"] == 2


def test_two_masters_resolve_to_the_better_one(cluster_class):
    c = settled(cluster_class)
    c.partitions.add(frozenset((1, 2)))
    c.run_for(1.0)
    assert c.masters() == [1, 2]
    c.partitions.clear()
    c.run_for(INTERVAL + 2 * c.latency)
    assert c.masters() == [1]
    assert "master 1 (prio 200) outranks us" in c.transitions(2)[-1].reason


def test_three_nodes_worse_backup_waits_for_better_backup(cluster_class):
    c = cluster_class([ElectionConfig(1, 250), ElectionConfig(2, 200), ElectionConfig(3, 100)])
    c.start()
    c.run_for(1.0)
    assert c.masters() == [1]
    c.kill(1)
    c.run_for(DEAD + 2 * INTERVAL)
    assert c.masters() == [2]
    assert [sc.new for sc in c.transitions(3)] == [State.BACKUP]


def test_snapshot_is_json_and_complete(cluster_class):
    import json

    c = settled(cluster_class)
    snap = c.node(2).snapshot(c.now)
    json.dumps(snap)
    assert snap["state"] == {"name": "BACKUP", "number": 1}
    assert snap["master"] == 1
    peer = snap["peers"][0]
    assert peer["node_id"] == 1 and peer["state"] == "MASTER" and peer["priority"] == 200
    assert 0 <= peer["age_s"] < INTERVAL
    assert snap["last_transition"]["to"] == "BACKUP"


def test_take_and_release_pair_up(cluster_class):
    c = settled(cluster_class)
    for verb in [AdminVerb.FAILOVER, AdminVerb.MAINTENANCE_ON, AdminVerb.MAINTENANCE_OFF]:
        c.event(2 if verb is AdminVerb.FAILOVER else 1, AdminCommand(verb))
        c.run_for(1.0)
    assert len(c.masters()) == 1  # Cluster._drain asserts pairing on every step


def test_datagrams_before_start_are_ignored():
    keys = KeyRing(((1, b"k" * 32),))
    node = Node(ElectionConfig(1, 100), keys, 1)
    node.receive_datagram(encode(Frame(FrameType.ADVERT, 2, State.MASTER, 9, 50_000, 1, 1), keys),
                          "hb0", 0.0)
    assert node.get_timer() is None and node.actions() == []


def test_set_keys_rotates_the_sending_key():
    old, new = KeyRing(((1, b"a" * 16),)), KeyRing(((2, b"b" * 16), (1, b"a" * 16)))
    node = Node(ElectionConfig(node_id=1, priority=100), old, epoch=1)
    node.start(0.0)
    node.actions()
    node.set_keys(new)
    node.handle_timer(node.get_timer())
    frames = [a.data for a in node.actions() if isinstance(a, SendFrame)]
    assert frames and decode(frames[-1], KeyRing(((2, b"b" * 16),))).node_id == 1


def test_master_that_lost_carrier_on_every_link_it_was_heard_on_is_down_at_once(cluster_class):
    c = settled(cluster_class)
    c.kill(1)
    c.event(2, CarrierLost("hb0"))
    assert c.node(2).state is State.BACKUP, "still heard on hb1 a moment ago"
    c.event(2, CarrierLost("hb1"))
    assert c.node(2).state is State.MASTER
    assert c.transitions(2)[-1].reason == "master 1 unreachable: carrier lost on hb1"


def test_carrier_lost_on_one_link_while_heard_on_the_other_changes_nothing(cluster_class):
    c = settled(cluster_class)
    before = len(c.log)
    c.event(2, CarrierLost("hb0"))
    c.run_for(1.0)
    assert c.masters() == [1]
    assert len(c.log) == before


def test_a_link_down_at_our_end_does_not_count_as_a_way_to_hear_the_master(cluster_class):
    c = settled(cluster_class)
    c.set_link(2, "hb0", False)
    c.kill(1)
    c.event(2, CarrierLost("hb1"))
    assert c.node(2).state is State.MASTER


def test_reload_of_the_block_list_takes_added_and_releases_removed_blocks_only_on_a_master():
    node = Node(ElectionConfig(1, 100), KeyRing(((1, b"k" * 32),)), 1, ("a", "b"))
    node.start(0.0)
    node.set_blocks(("b", "c"), 0.01)
    assert node.state is State.BACKUP
    assert not any(isinstance(a, (ReleaseBlock, TakeBlock)) for a in node.actions())
    node.handle_timer(DEAD)
    assert node.state is State.MASTER
    assert [a.name for a in node.actions() if isinstance(a, TakeBlock)] == ["b", "c"]
    node.set_blocks(("c", "d"), DEAD + 0.01)
    acts = node.actions()
    assert [(type(a), a.name) for a in acts] == [(ReleaseBlock, "b"), (TakeBlock, "d")]


def test_a_master_announces_again_when_a_peer_it_gave_up_for_dead_is_heard_or_resigns():
    """After a split brain the loser may yield before the winner ever hears it as master."""
    keys = KeyRing(((1, b"k" * 32),))
    node = Node(ElectionConfig(2, 200), keys, 1, ("ext",))
    node.start(0.0)
    node.handle_timer(DEAD)
    assert node.state is State.MASTER
    for seq in range(5):  # a live backup, heard every interval: nothing to announce
        node.receive_datagram(encode(Frame(FrameType.ADVERT, 1, State.BACKUP, 100, 50_000, 7, seq), keys),
                              "hb0", DEAD + 0.05 * seq)
    node.actions()
    node.receive_datagram(encode(Frame(FrameType.ADVERT, 1, State.BACKUP, 100, 50_000, 7, 5), keys), "hb0",
                          DEAD + 0.25)
    assert not [a for a in node.actions() if isinstance(a, Announce)]
    # Silent for seconds (a partition), then its resign as it yields.
    node.receive_datagram(encode(Frame(FrameType.RESIGN, 1, State.BACKUP, 100, 50_000, 7, 90), keys), "hb0", 3.0)
    assert [a.name for a in node.actions() if isinstance(a, Announce)] == ["ext"]
    assert node.state is State.MASTER
