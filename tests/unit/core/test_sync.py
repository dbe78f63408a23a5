"""The sync channel over an in-memory link with a manual clock (h11's ConnectionPair idea).

`Pair` plays the runtime for two nodes: it sends what the channels return,
re-arms their timers, and dumps a node's table through `send` whenever its
channel says `resync_needed`, in chunks while `room()` allows, reading each
entry's current value at the time of its chunk (as the runtime must). The link
loses, doubles and reorders datagrams as told. Each node's `view` is its copy
of the other's table, kept as the runtime keeps it: a record upserts or
deletes one key; RESYNC_BEGIN marks every key stale, and RESYNC_END drops the
keys no record refreshed since.
"""

from __future__ import annotations

import copy
import heapq
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.sync import DROP_REASONS, SyncChannel, SyncConfig
from agent.core.syncwire import (
    FLAG_RESYNC_BEGIN, FLAG_RESYNC_END, MAC_SIZE, REASONS, RECORD_SIZE, SyncFrame, SyncType, decode, encode,
)
from agent.core.wire import KeyRing, epoch_limit

KEYS = KeyRing(((1, b"s" * 32),))
RECORD = struct.Struct("<QQQ72x")  # key, value (0: destroyed), id: 96 bytes like dp_ct_record
assert RECORD.size == RECORD_SIZE
SMALL = SyncConfig(window=8, rx_window=12, queue_bytes=RECORD_SIZE * 14 * 24, resend_burst=4)
# What an honest link may cause; anything else is a protocol bug.
BENIGN = {"duplicate", "old_epoch", "not_ours", "rx_window", "replay"}


class Node:
    def __init__(self, node_id: int, epoch: int, config: SyncConfig) -> None:
        self.node_id = node_id
        self.config = config
        self.channel = SyncChannel(node_id, epoch, KEYS, config)
        self.table: dict[int, int] = {}  # this node's own (kernel) table: survives restarts
        self.view: dict[int, int] = {}  # its copy of the peer's table
        self.stale: set[int] | None = None
        self.delivered: list[int] = []  # record ids, in delivery order
        self.dump: list[int] | None = None  # keys of a resync still to send
        self.must_deliver: set[int] = set()  # ids sent since the last resync began
        self.sent_ids: list[int] = []
        self.restarts = 0
        self.epoch = epoch

    def restart(self, epoch: int) -> None:
        self.channel = SyncChannel(self.node_id, epoch, KEYS, self.config)
        self.view, self.stale, self.dump, self.delivered = {}, None, None, []
        self.epoch = epoch
        self.restarts += 1


class Pair:
    def __init__(self, config: SyncConfig = SyncConfig(), seed: int = 0, latency: float = 0.001) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self.latency = latency
        self.loss = self.dup = self.jitter = 0.0
        self.partitioned = False
        self.nodes = {1: Node(1, 1_000, config), 2: Node(2, 2_000, config)}
        self.flights: list[tuple[float, int, int, bytes]] = []
        self.order = 0
        self.next_id = 1
        self.wire: list[tuple[int, bytes]] = []  # everything sent, for replay tests

    def peer(self, node_id: int) -> Node:
        return self.nodes[3 - node_id]

    # -- the runtime ------------------------------------------------------------

    def transmit(self, src: int, frames: list[bytes]) -> None:
        for data in frames:
            self.wire.append((src, data))
            if self.partitioned or self.rng.random() < self.loss:
                continue
            copies = 2 if self.rng.random() < self.dup else 1
            for _ in range(copies):
                self.order += 1
                at = self.now + self.latency + self.rng.random() * self.jitter
                heapq.heappush(self.flights, (at, self.order, 3 - src, data))

    def record(self, node: Node, key: int, value: int) -> bytes:
        ident, self.next_id = self.next_id, self.next_id + 1
        node.sent_ids.append(ident)
        if node.channel.peer_known:
            node.must_deliver.add(ident)
        return RECORD.pack(key, value, ident)

    def pump(self, node: Node) -> None:
        """What the runtime does after every call: serve a resync the channel asks for."""
        channel = node.channel
        if channel.resync_needed:
            node.dump = sorted(node.table)
            node.must_deliver = set()
            begin = True
        elif node.dump is None:
            return
        else:
            begin = False
        while node.dump is not None:
            room = channel.room() // RECORD_SIZE
            if room == 0 and not begin:
                return
            take, node.dump = node.dump[:room], node.dump[room:]
            records = b"".join(self.record(node, k, node.table[k]) for k in take if k in node.table)
            end = not node.dump
            if end:
                node.dump = None
            self.transmit(node.node_id, channel.send(records, self.now, resync_begin=begin, resync_end=end))
            begin = False

    def event(self, node_id: int, changes: list[tuple[int, int]]) -> None:
        node = self.nodes[node_id]
        for key, value in changes:
            if value:
                node.table[key] = value
            else:
                node.table.pop(key, None)
        records = b"".join(self.record(node, key, value) for key, value in changes)
        self.transmit(node_id, node.channel.send(records, self.now))
        self.pump(node)

    def apply(self, node: Node, records: list[tuple[bytes, int]]) -> None:
        for payload, flags in records:
            if flags & FLAG_RESYNC_BEGIN:
                node.stale = set(node.view)
            for key, value, ident in RECORD.iter_unpack(payload):
                node.delivered.append(ident)
                if node.stale is not None:
                    node.stale.discard(key)
                if value:
                    node.view[key] = value
                else:
                    node.view.pop(key, None)
            if flags & FLAG_RESYNC_END and node.stale is not None:
                for key in node.stale:
                    node.view.pop(key, None)
                node.stale = None

    def deliver(self, dst: int, data: bytes):
        node = self.nodes[dst]
        limit = epoch_limit(node.epoch, self.now)
        result = node.channel.receive(data, self.now, limit)
        self.apply(node, result.records)
        self.transmit(dst, result.frames)
        self.pump(node)
        return result

    # -- the clock --------------------------------------------------------------

    def run_until(self, end: float) -> None:
        while True:
            timers = [(n.channel.get_timer(), nid) for nid, n in self.nodes.items()]
            at, nid = min(timers)
            flight = self.flights[0][0] if self.flights else float("inf")
            if min(at, flight) > end:
                break
            self.now = max(self.now, min(at, flight))
            if flight <= at:
                _, _, dst, data = heapq.heappop(self.flights)
                self.deliver(dst, data)
            else:
                node = self.nodes[nid]
                self.transmit(nid, node.channel.handle_timer(self.now))
                self.pump(node)
        self.now = end

    def run_for(self, duration: float) -> None:
        self.run_until(self.now + duration)

    def heal(self) -> None:
        self.loss = self.dup = self.jitter = 0.0
        self.partitioned = False

    # -- checks ------------------------------------------------------------------

    def check(self, *, settled: bool) -> None:
        for node in self.nodes.values():
            peer = self.peer(node.node_id)
            delivered = node.delivered
            assert all(a < b for a, b in zip(delivered, delivered[1:])), "out of order or twice"
            drops = set(node.channel.stats(self.now)["drops"])
            assert drops <= BENIGN, drops
            if settled:
                assert node.view == peer.table
                assert peer.must_deliver <= set(delivered), "a record sent after the last resync was lost"
                assert node.channel.in_sync(self.now), node.channel.problems(self.now)
                stats = node.channel.stats(self.now)
                assert stats["unacked"] == stats["queued_frames"] == stats["rx_buffered"] == 0


def started(config: SyncConfig = SyncConfig(), **kw) -> Pair:
    pair = Pair(config, **kw)
    pair.run_for(1.0)
    return pair


def changes(rng: random.Random, n: int, keys: int = 200) -> list[tuple[int, int]]:
    return [(rng.randrange(1, keys), rng.randrange(0, 4)) for _ in range(n)]


# -- the whole protocol under a hostile link -------------------------------------------

STEP = st.one_of(
    st.tuples(st.just("event"), st.sampled_from([1, 2]), st.integers(1, 60)),
    st.tuples(st.just("run"), st.floats(0.0, 1.5)),
    st.tuples(st.just("run"), st.just(6.0)),  # past dead_after: a partition becomes a silent peer
    st.tuples(st.just("link"), st.sampled_from([0.0, 0.1, 0.3, 0.6]), st.sampled_from([0.0, 0.2]),
              st.sampled_from([0.0, 0.005, 0.05])),
    st.tuples(st.just("partition"), st.booleans()),
    st.tuples(st.just("restart"), st.sampled_from([1, 2])),
    st.tuples(st.just("request"), st.sampled_from([1, 2])),
)


def play(pair: Pair, steps, seed: int) -> None:
    rng = random.Random(seed)
    epochs = 10_000
    for step in steps:
        if step[0] == "event":
            pair.event(step[1], changes(rng, step[2]))
        elif step[0] == "run":
            pair.run_for(step[1])
        elif step[0] == "link":
            pair.loss, pair.dup, pair.jitter = step[1:]
        elif step[0] == "partition":
            pair.partitioned = step[1]
        elif step[0] == "restart":
            epochs += 1
            pair.nodes[step[1]].restart(epochs)
        elif step[0] == "request":
            node = pair.nodes[step[1]]
            pair.transmit(step[1], node.channel.request_resync(pair.now))
        pair.check(settled=False)
    pair.heal()
    pair.run_for(30.0)
    pair.check(settled=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(STEP, max_size=40), st.integers(0, 2**16))
def test_views_converge_over_a_lossy_reordering_doubling_link(steps, seed):
    play(started(SMALL, seed=seed), steps, seed)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(STEP, max_size=25), st.integers(0, 2**16))
def test_views_converge_with_default_parameters(steps, seed):
    play(started(seed=seed), steps, seed)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(1, 80), st.floats(0.0, 0.3)), max_size=30),
       st.sampled_from([0.0, 0.2, 0.5]), st.sampled_from([0.0, 0.3]), st.sampled_from([0.0, 0.02]),
       st.integers(0, 2**16))
def test_without_restarts_or_overflow_every_record_arrives_once_in_order(batches, loss, dup, jitter, seed):
    pair = started(SyncConfig(window=64, queue_bytes=2**24), seed=seed)
    pair.loss, pair.dup, pair.jitter = loss, dup, jitter
    rng = random.Random(seed)
    for size, pause in batches:
        pair.event(1, changes(rng, size))
        pair.run_for(pause)
    pair.heal()
    pair.run_for(30.0)
    pair.check(settled=True)
    a, b = pair.nodes[1], pair.nodes[2]
    assert b.delivered == a.sent_ids
    assert a.channel.stats(pair.now)["resyncs_served"] == 1


# -- the pieces --------------------------------------------------------------------------

def test_contact_offers_a_resync_both_ways_and_then_all_is_quiet():
    pair = Pair()
    pair.nodes[1].table = {5: 1, 6: 2}
    pair.run_for(1.0)
    assert pair.nodes[2].view == {5: 1, 6: 2}
    for node in pair.nodes.values():
        stats = node.channel.stats(pair.now)
        assert stats["resyncs_served"] == 1 and stats["resyncs_received"] == 1
        assert node.channel.in_sync(pair.now)
    sent = len(pair.wire)
    pair.run_for(10.0)
    # Only keepalives: one HELLO per interval per node.
    assert len(pair.wire) - sent <= 2 * 10 / 0.5 + 2
    assert all(decode(d, KEYS).kind is SyncType.HELLO for _, d in pair.wire[sent:])


def test_records_before_contact_go_nowhere_and_are_counted():
    channel = SyncChannel(1, 1_000, KEYS)
    assert channel.send(RECORD.pack(1, 1, 1) * 3, 0.0) == []
    assert channel.stats(0.0)["records_dropped"]["no_peer"] == 3
    assert not channel.resync_needed and not channel.in_sync(0.0)


def test_a_big_send_is_split_into_full_frames_and_acks_are_coalesced():
    pair = started()
    pair.event(1, [(k, 1) for k in range(1, 14 * 100 + 1)])
    pair.run_for(0.5)
    a, b = pair.nodes[1].channel.stats(pair.now), pair.nodes[2].channel.stats(pair.now)
    assert b["records_received"] == 1400 and b["frames_received"] == 100 + 1  # + the empty resync
    assert b["acks_sent"] <= 100 // SyncConfig().ack_every + 3
    assert a["unacked"] == 0 and a["frames_resent"] == 0


def test_a_lost_tail_is_resent_after_the_rto():
    pair = started()
    pair.partitioned = True
    pair.event(1, [(1, 1)])
    pair.partitioned = False
    pair.run_for(SyncConfig().rto * 1.5)
    assert pair.nodes[2].view == {1: 1}
    assert pair.nodes[1].channel.stats(pair.now)["timeouts"] == 1


def test_a_gap_is_nacked_and_filled_before_any_timeout():
    pair = started()
    a = pair.nodes[1].channel
    frames = a.send(b"".join(pair.record(pair.nodes[1], k, 1) for k in range(1, 14 * 3 + 1)), pair.now)
    assert len(frames) == 3
    pair.nodes[1].table.update({k: 1 for k in range(1, 43)})
    pair.transmit(1, [frames[0], frames[2]])  # the middle one is lost
    pair.run_for(0.01)
    assert pair.nodes[2].view == pair.nodes[1].table
    stats = a.stats(pair.now)
    assert stats["nacks_received"] == 1 and stats["frames_resent"] == 1 and stats["timeouts"] == 0


def test_the_window_holds_frames_back_without_dropping_them():
    pair = started(SyncConfig(window=4))
    pair.partitioned = True
    pair.event(1, [(k, 1) for k in range(1, 14 * 10 + 1)])
    stats = pair.nodes[1].channel.stats(pair.now)
    assert stats["unacked"] == 4 and stats["queued_frames"] == 6
    pair.partitioned = False
    pair.run_for(5.0)
    pair.check(settled=True)
    assert pair.nodes[1].channel.stats(pair.now)["resyncs_served"] == 1


def test_an_overflowing_queue_becomes_a_resync_and_the_receiver_skips_the_gap():
    config = SyncConfig(window=4, queue_bytes=RECORD_SIZE * 14 * 8)
    pair = started(config)
    pair.partitioned = True
    pair.event(1, [(k, 1) for k in range(1, 14 * 4 + 1)])  # fills the window
    pair.partitioned = False
    pair.nodes[1].channel.send(b"", pair.now)  # nothing
    # Held back by the window, more than the queue holds: dropped, a resync instead.
    a = pair.nodes[1]
    for key in range(1000, 1000 + 14 * 12):
        a.table[key] = 2
    a.channel.send(b"".join(pair.record(a, k, 2) for k in range(1000, 1000 + 14 * 12)), pair.now)
    assert a.channel.resync_needed
    assert a.channel.stats(pair.now)["records_dropped"]["overflow"] == 14 * 12
    pair.pump(a)
    pair.run_for(5.0)
    pair.check(settled=True)
    b = pair.nodes[2].channel.stats(pair.now)
    assert b["frames_skipped"] >= 1 or b["records_received"] >= 14 * 4


def test_a_nack_for_frames_a_resync_superseded_is_answered_with_the_barrier():
    pair = started()
    a, b = pair.nodes[1], pair.nodes[2]
    lost = a.channel.send(RECORD.pack(1, 1, pair.next_id), pair.now)
    a.table[1] = 1
    barrier = a.channel.send(RECORD.pack(1, 1, pair.next_id + 1), pair.now, resync_begin=True, resync_end=True)
    later = a.channel.send(RECORD.pack(2, 2, pair.next_id + 2), pair.now)
    a.table[2] = 2
    pair.next_id += 3
    # The receiver sees only the frame after the barrier and NACKs the two below it.
    result = pair.deliver(2, later[0])
    assert result.records == [] and len(result.frames) == 1
    nack = decode(result.frames[0], KEYS)
    assert nack.kind is SyncType.NACK and nack.ranges == ((decode(lost[0], KEYS).seq, decode(later[0], KEYS).seq - 1),)
    answer = a.channel.receive(result.frames[0], pair.now)
    assert answer.frames == barrier
    result = pair.deliver(2, answer.frames[0])
    assert [flags for _, flags in result.records] == [FLAG_RESYNC_BEGIN | FLAG_RESYNC_END, 0]
    assert b.view == {1: 1, 2: 2}
    assert b.channel.stats(pair.now)["frames_skipped"] == 1
    assert pair.deliver(2, lost[0]).dropped == "duplicate"


def test_a_restarted_peer_starts_both_streams_over_with_resyncs():
    pair = started()
    pair.event(1, [(1, 1), (2, 2)])
    pair.event(2, [(9, 9)])
    pair.run_for(1.0)
    pair.nodes[2].restart(5_000)
    pair.run_for(2.0)
    pair.check(settled=True)
    assert pair.nodes[2].view == {1: 1, 2: 2}
    stats = pair.nodes[1].channel.stats(pair.now)
    assert stats["peer_restarts"] == 1 and stats["resyncs_served"] == 2


def test_frames_for_a_previous_incarnation_are_refused():
    pair = started()
    pair.partitioned = True
    pair.event(1, [(1, 1)])
    old = pair.wire[-1][1]
    pair.partitioned = False
    pair.nodes[2].restart(5_000)
    pair.run_for(2.0)
    assert pair.deliver(2, old).dropped == "not_ours"
    pair.check(settled=True)


def test_request_resync_is_resent_until_served_and_served_once():
    pair = started()
    pair.nodes[1].table = {k: 1 for k in range(1, 30)}
    pair.loss = 0.5
    pair.transmit(2, pair.nodes[2].channel.request_resync(pair.now))
    pair.run_for(5.0)
    pair.heal()
    pair.run_for(5.0)
    pair.check(settled=True)
    served = pair.nodes[1].channel.stats(pair.now)["resyncs_served"]
    assert served == 2, served
    assert pair.nodes[2].view == pair.nodes[1].table


# -- hostile frames -------------------------------------------------------------------

def state(channel: SyncChannel) -> dict:
    """Everything a dropped frame must leave alone (its drop counter aside)."""
    kept = {k: v for k, v in vars(channel).items() if k not in ("_drops", "_guard", "_sealer", "_keys", "_config")}
    windows = {n: vars(w) for n, w in channel._guard._windows.items()}
    return copy.deepcopy(kept | {"guard": windows})


def busy_pair() -> Pair:
    pair = started(SMALL, seed=3)
    pair.loss, pair.jitter = 0.3, 0.02
    rng = random.Random(3)
    for _ in range(40):
        pair.event(1, changes(rng, 30))
        pair.event(2, changes(rng, 5))
        pair.run_for(0.05)
    return pair


def resign(data: bytes, key: bytes = b"s" * 32) -> bytes:
    import hashlib
    import hmac
    body = data[:-MAC_SIZE]
    return body + hmac.new(key, body, hashlib.sha256).digest()


def test_each_hostile_frame_is_dropped_with_its_reason_and_changes_nothing():
    pair = busy_pair()
    b = pair.nodes[2].channel
    frames = [d for src, d in pair.wire if src == 1]
    data = [d for d in frames if decode(d, KEYS).kind is SyncType.DATA]
    sent_to_1 = pair.nodes[2].channel._tx_next - 1
    a_epoch, b_epoch = pair.nodes[1].epoch, pair.nodes[2].epoch
    top = decode(frames[-1], KEYS)

    def ctrl(kind, **kw) -> bytes:
        fields = dict(node_id=1, epoch=a_epoch, serial=top.serial + 10_000, seq=top.seq, ack=0, ack_epoch=b_epoch)
        fields.update(kw)
        return encode(SyncFrame(kind, **fields), KEYS)

    cases = {
        "auth": data[-1][:-1] + bytes([data[-1][-1] ^ 1]),
        "short": data[-1][:40],
        "count": resign(data[-1][:52 - 2] + b"\x00\x09" + data[-1][52:]),
        "key_id": data[-1][:4] + b"\x07" + data[-1][5:],
        "own_id": ctrl(SyncType.HELLO, node_id=2),
        "node_id": ctrl(SyncType.HELLO, node_id=3),
        "future_epoch": ctrl(SyncType.HELLO, epoch=10**30 % 2**64),
        "old_epoch": ctrl(SyncType.HELLO, epoch=a_epoch - 1),
        "not_ours": ctrl(SyncType.HELLO, ack_epoch=b_epoch + 1),
        "ack": ctrl(SyncType.ACK, ack=sent_to_1 + 1),
        "nack_range": ctrl(SyncType.NACK, ranges=((1, sent_to_1 + 1),)),
        "replay": ctrl(SyncType.ACK, serial=b._guard._windows[1].top - 64),  # fell out of the window
        "duplicate": data[0],
    }
    for reason, frame in cases.items():
        before = state(b)
        result = pair.deliver(2, frame)
        assert result.dropped == reason, (reason, result.dropped)
        assert result.records == [] and result.frames == [] or reason == "duplicate"
        after = state(b)
        if reason == "duplicate":  # counted, and an ack is owed again; nothing else moves
            for key in ("_ack_owed", "_ack_at", "_count", "_last_heard"):
                before.pop(key), after.pop(key)
        assert after == before, reason
        assert b.stats(pair.now)["drops"][reason] >= 1
        assert reason in REASONS | DROP_REASONS
    pair.heal()
    pair.run_for(30.0)
    assert pair.nodes[2].view == pair.nodes[1].table


def test_every_frame_replayed_later_changes_no_view():
    pair = busy_pair()
    pair.heal()
    pair.run_for(30.0)
    pair.check(settled=True)
    views = {n: dict(node.view) for n, node in pair.nodes.items()}
    for src, data in list(pair.wire):
        result = pair.deliver(3 - src, data)
        assert result.records == [] and not result.resync_requested
    pair.run_for(5.0)
    assert {n: node.view for n, node in pair.nodes.items()} == views
    pair.check(settled=True)


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, 10**6), value=st.integers(0, 255), sign=st.booleans(), cut=st.integers(0, 2000))
def test_mangled_frames_never_raise_and_never_break_the_stream(position, value, sign, cut):
    pair = mangle_pair()
    b = pair.nodes[2].channel
    src, data = pair.wire[position % len(pair.wire)]
    mangled = bytearray(data[:max(cut, 1)] if cut < len(data) else data)
    mangled[position % len(mangled)] = value
    mangled = bytes(mangled)
    if sign and len(mangled) > MAC_SIZE:
        mangled = resign(mangled)
    result = b.receive(mangled, pair.now, epoch_limit(pair.nodes[2].epoch, pair.now))
    if result.dropped is not None:
        assert result.dropped in REASONS | DROP_REASONS
    pair.apply(pair.nodes[2], result.records)


_MANGLE: list[Pair] = []


def mangle_pair() -> Pair:
    if not _MANGLE:
        pair = busy_pair()
        pair.heal()
        pair.run_for(5.0)
        _MANGLE.append(pair)
    return copy.deepcopy(_MANGLE[0])


@pytest.mark.parametrize("ranges", [((1, 2**64 - 1),), tuple((i * 2 + 1, i * 2 + 1) for i in range(16))])
def test_a_huge_nack_is_refused_or_bounded_by_the_window(ranges):
    pair = started(SMALL)
    pair.partitioned = True
    pair.event(1, [(k, 1) for k in range(1, 14 * 20)])
    a = pair.nodes[1].channel
    nack = encode(SyncFrame(SyncType.NACK, 2, pair.nodes[2].epoch, 10**6, 0, 0, pair.nodes[1].epoch,
                            ranges=ranges), KEYS)
    result = a.receive(nack, pair.now)
    assert result.dropped == "nack_range" or len(result.frames) <= SMALL.window


def test_timers_always_say_when():
    channel = SyncChannel(1, 1_000, KEYS)
    assert channel.get_timer() <= 0.0
    frames = channel.handle_timer(0.0)
    assert [decode(f, KEYS).kind for f in frames] == [SyncType.HELLO]
    assert channel.get_timer() == pytest.approx(0.5)
    assert channel.handle_timer(0.1) == []


def test_flags_on_delivered_records():
    pair = started()
    a = pair.nodes[1]
    frames = a.channel.send(RECORD.pack(1, 1, 99) * 30, pair.now, resync_begin=True, resync_end=True)
    flags = [pair.deliver(2, f).records[0][1] for f in frames]
    assert flags == [FLAG_RESYNC_BEGIN, 0, FLAG_RESYNC_END]


def test_sealed_payloads_sync_and_plaintext_is_refused():
    config = SyncConfig(encrypt=True)
    pair = started(config, seed=5)
    pair.loss = 0.2
    rng = random.Random(5)
    for _ in range(20):
        pair.event(1, changes(rng, 20))
        pair.run_for(0.05)
    pair.heal()
    pair.run_for(10.0)
    pair.check(settled=True)
    data = [d for src, d in pair.wire if src == 1 and decode(d, KEYS, None if d[5] & 0x80 == 0 else _opener()).kind
            is SyncType.DATA]
    assert data and all(d[5] & 0x80 for d in data)
    b = pair.nodes[2]
    plain = encode(SyncFrame(SyncType.DATA, 1, pair.nodes[1].epoch, 10**6, 10**4, 0, b.epoch,
                             payload=RECORD.pack(1, 1, 1)), KEYS)
    assert b.channel.receive(plain, pair.now).dropped == "plaintext"


def _opener():
    from agent.core.syncwire import encryption
    return encryption(KEYS)


def test_a_silent_peer_holds_no_queue_and_gets_one_resync_when_back():
    pair = started(SyncConfig(window=4))
    a = pair.nodes[1]
    pair.partitioned = True
    dumps = []
    for second in range(12):
        pair.event(1, [(k, second + 1) for k in range(1, 14 * 10 + 1)])
        dumps.append(a.channel.resync_needed)
        pair.run_for(1.0)
    stats = a.channel.stats(pair.now)
    assert not stats["peer_alive"] and stats["peer_silences"] == 1
    assert stats["unacked"] == stats["queued_frames"] == stats["queued_bytes"] == 0
    assert stats["records_dropped"]["silent"] >= 14 * 10 * 6
    assert not any(dumps)  # no table dump for a peer that cannot take it
    assert "peer silent" in a.channel.problems(pair.now)
    pair.partitioned = False
    pair.run_for(5.0)
    pair.check(settled=True)
    assert a.channel.stats(pair.now)["resyncs_served"] == 2
