import hashlib
import hmac
import random
import struct
import tracemalloc
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.states import State
from agent.core.wire import (
    EPOCH_TOLERANCE_NS, FLAG_YIELD, FRAME_SIZE, MAX_PEERS, REASONS, WINDOW, Frame, FrameError,
    FrameType, KeyRing, ReplayGuard, Verdict, decode, encode, epoch_limit,
)

KEY_A = (1, b"a" * 32)
KEY_B = (2, b"b" * 32)
RING = KeyRing((KEY_A,))
FRAME = Frame(FrameType.ADVERT, node_id=7, state=State.MASTER, priority=200,
              advert_interval_us=50_000, epoch=1_700_000_000_000_000_000, seq=42)


def reason_of(data: bytes, ring: KeyRing = RING) -> str:
    with pytest.raises(FrameError) as info:
        decode(data, ring)
    return info.value.reason


def signed(header: bytes, key: bytes = KEY_A[1]) -> bytes:
    """A frame with a valid MAC around a hand-made header (post-auth checks)."""
    return header + hmac.new(key, header, hashlib.sha256).digest()


def header(**over: int) -> bytes:
    fields = dict(version=1, kind=1, key_id=1, state=2, priority=200, flags=0,
                  node_id=7, interval=50_000, epoch=1, seq=1)
    fields.update(over)
    return struct.pack(">2sBBBBBBIIQQ", b"DP", fields["version"], fields["kind"],
                       fields["key_id"], fields["state"], fields["priority"], fields["flags"],
                       fields["node_id"], fields["interval"], fields["epoch"], fields["seq"])


def test_round_trip_is_64_bytes():
    data = encode(FRAME, RING)
    assert len(data) == FRAME_SIZE == 64
    assert decode(data, RING) == FRAME


def test_round_trip_resign_with_yield_flag():
    frame = Frame(FrameType.RESIGN, 3, State.BACKUP, 1, 1_000, 0, 0, FLAG_YIELD)
    assert decode(encode(frame, RING), RING) == frame


def test_truncated_is_short():
    data = encode(FRAME, RING)
    assert reason_of(b"") == "short"
    assert reason_of(data[:-1]) == "short"


def test_oversized_is_long():
    assert reason_of(encode(FRAME, RING) + b"\0") == "long"
    assert reason_of(b"\0" * 9000) == "long"


def test_bad_magic():
    data = encode(FRAME, RING)
    assert reason_of(b"XX" + data[2:]) == "magic"


def test_unknown_version():
    assert reason_of(signed(header(version=3))) == "version"
    # Version 2 carries views after the header: without any it is cut short.
    assert reason_of(signed(header(version=2))) == "short"


def test_unknown_type_after_auth():
    assert reason_of(signed(header(kind=3))) == "type"


def test_unknown_key_id():
    assert reason_of(signed(header(key_id=9))) == "key_id"


def test_wrong_key_is_auth():
    other = KeyRing(((1, b"x" * 32),))
    assert reason_of(encode(FRAME, other)) == "auth"


@pytest.mark.parametrize("over", [
    dict(state=9), dict(priority=0), dict(priority=255), dict(flags=0x80),
    dict(interval=0), dict(interval=60_000_001),
    dict(kind=2, state=2),  # RESIGN claiming MASTER
])
def test_out_of_range_field(over):
    assert reason_of(signed(header(**over))) == "field"


def test_every_bit_flip_is_detected():
    data = encode(FRAME, RING)
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        reason = reason_of(bytes(flipped))
        # Flips in magic/version/key id are caught before the MAC, all others by it.
        assert reason in {"magic", "version", "key_id", "auth"}, bit
        if bit >= 5 * 8:
            assert reason == "auth", bit


def test_key_rotation_sends_first_accepts_any():
    old, new = KeyRing((KEY_A,)), KeyRing((KEY_B,))
    rotating = KeyRing((KEY_B, KEY_A))
    assert decode(encode(FRAME, old), rotating) == FRAME
    assert decode(encode(FRAME, new), rotating) == FRAME
    assert decode(encode(FRAME, rotating), new) == FRAME
    assert reason_of(encode(FRAME, rotating), old) == "key_id"


def test_keyring_rejects_bad_keys():
    for keys in [(), ((1, b""),), ((256, b"k"),), ((1, b"k"), (1, b"j"))]:
        with pytest.raises(ValueError):
            KeyRing(keys)


def test_encode_refuses_out_of_range_frame():
    with pytest.raises(ValueError):
        encode(Frame(FrameType.ADVERT, 1, State.BACKUP, 0, 50_000, 0, 0), RING)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_decode_of_arbitrary_bytes_only_raises_frame_error(data):
    try:
        decode(data, RING)
    except FrameError as error:
        assert error.reason in REASONS


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=28, max_size=28), st.booleans())
def test_decode_of_signed_random_headers_only_raises_frame_error(rest, sign):
    """Headers past the magic/version/key gate, half with a valid MAC, reach the field checks."""
    head = b"DP\x01" + bytes([rest[0] % 4]) + b"\x01" + rest[1:]  # type 0..3, key id 1
    data = signed(head) if sign else head + bytes(32)
    try:
        decode(data, RING)
    except FrameError as error:
        assert error.reason in REASONS


# -- replay window ------------------------------------------------------------

def test_replay_new_then_duplicate():
    guard = ReplayGuard()
    assert guard.check(2, 100, 5) is Verdict.NEW
    assert guard.check(2, 100, 5) is Verdict.DUPLICATE


def test_reorder_within_window_is_accepted_once():
    guard = ReplayGuard()
    assert guard.check(2, 100, 10) is Verdict.NEW
    assert guard.check(2, 100, 8) is Verdict.REORDERED
    assert guard.check(2, 100, 8) is Verdict.DUPLICATE
    assert guard.check(2, 100, 9) is Verdict.REORDERED
    assert guard.check(2, 100, 11) is Verdict.NEW


def test_window_edge():
    guard = ReplayGuard()
    assert guard.check(2, 100, 100) is Verdict.NEW
    assert guard.check(2, 100, 100 - 63) is Verdict.REORDERED
    assert guard.check(2, 100, 100 - 64) is Verdict.REPLAY
    assert guard.check(2, 100, 200) is Verdict.NEW  # big jump clears the bitmap
    assert guard.check(2, 100, 199) is Verdict.REORDERED
    assert guard.check(2, 100, 100) is Verdict.REPLAY


def test_older_epoch_is_replay_newer_epoch_resets():
    guard = ReplayGuard()
    assert guard.check(2, 100, 50) is Verdict.NEW
    assert guard.check(2, 99, 51) is Verdict.REPLAY
    assert guard.check(2, 101, 0) is Verdict.NEW  # peer restarted
    assert guard.check(2, 101, 0) is Verdict.DUPLICATE
    assert guard.check(2, 100, 60) is Verdict.REPLAY


def test_windows_are_per_sender():
    guard = ReplayGuard()
    assert guard.check(2, 100, 5) is Verdict.NEW
    assert guard.check(3, 100, 5) is Verdict.NEW


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 150), max_size=60))
def test_window_accepts_each_seq_at_most_once(seqs):
    guard = ReplayGuard()
    accepted: list[int] = []
    for seq in seqs:
        if guard.check(1, 1, seq) in (Verdict.NEW, Verdict.REORDERED):
            accepted.append(seq)
    assert len(accepted) == len(set(accepted))
    # The newest seq is always accepted the first time it appears.
    if seqs:
        assert max(seqs) in accepted


# -- one signed frame must not do lasting damage --------------------------------

U64_MAX = 2**64 - 1
ACCEPTED = (Verdict.NEW, Verdict.REORDERED)


def peak_bytes(call: Callable[[], object]) -> int:
    """Bytes Python allocated at the peak of one call: a count of its work, not a timing."""
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def windows_are_fixed_size(guard: ReplayGuard) -> bool:
    return all(0 < w.seen < 1 << WINDOW for w in guard._windows.values())


def test_a_huge_seq_jump_costs_what_a_step_of_one_costs():
    guard = ReplayGuard()
    guard.check(2, 100, 0)
    assert peak_bytes(lambda: guard.check(2, 100, 2**30)) < 4096
    assert guard.check(2, 100, 2**30 - 1) is Verdict.REORDERED
    assert guard.check(2, 100, 0) is Verdict.REPLAY
    assert windows_are_fixed_size(guard)


def test_a_jump_to_the_last_u64_seq_is_handled():
    guard = ReplayGuard()
    guard.check(2, 100, 0)
    assert guard.check(2, 100, U64_MAX) is Verdict.NEW
    assert guard.check(2, 100, U64_MAX) is Verdict.DUPLICATE
    assert guard.check(2, 100, U64_MAX - WINDOW + 1) is Verdict.REORDERED
    assert guard.check(2, 100, U64_MAX - WINDOW) is Verdict.REPLAY
    assert windows_are_fixed_size(guard)


def test_a_future_epoch_is_dropped_and_changes_nothing():
    guard = ReplayGuard()
    assert guard.check(2, 100, 5, max_epoch=1_000) is Verdict.NEW
    assert guard.check(2, U64_MAX, 0, max_epoch=1_000) is Verdict.FUTURE_EPOCH
    assert guard.check(2, 1_001, 0, max_epoch=1_000) is Verdict.FUTURE_EPOCH
    # The real sender's next frames are still new, its old ones still seen.
    assert guard.check(2, 100, 6, max_epoch=1_000) is Verdict.NEW
    assert guard.check(2, 100, 5, max_epoch=1_000) is Verdict.DUPLICATE
    assert guard.check(2, 1_000, 0, max_epoch=1_000) is Verdict.NEW  # the limit itself is fine


def test_a_future_epoch_from_a_new_sender_takes_no_slot():
    guard = ReplayGuard(max_peers=1)
    assert guard.check(2, U64_MAX, 0, max_epoch=1_000) is Verdict.FUTURE_EPOCH
    assert guard.check(3, 100, 0, max_epoch=1_000) is Verdict.NEW


def test_without_a_limit_any_epoch_is_accepted():
    assert ReplayGuard().check(2, U64_MAX, 0) is Verdict.NEW


def test_epoch_limit_is_our_start_plus_uptime_plus_tolerance():
    assert epoch_limit(1_000, 2.5) == 1_000 + 2_500_000_000 + EPOCH_TOLERANCE_NS


def test_epoch_limit_admits_a_peer_restarted_now_with_a_skewed_clock():
    own = 1_700_000_000 * 10**9
    hour = 3600 * 10**9
    limit = epoch_limit(own, 3600.0)
    assert own + hour + EPOCH_TOLERANCE_NS // 2 <= limit  # restarted just now, clock 5 min ahead
    assert own + hour + 2 * EPOCH_TOLERANCE_NS > limit
    assert U64_MAX > limit


def test_senders_beyond_the_cap_are_refused_not_evicting_live_ones():
    guard = ReplayGuard()
    for node_id in range(MAX_PEERS):
        assert guard.check(node_id, 100, 1) is Verdict.NEW
    assert guard.check(MAX_PEERS, 100, 1) is Verdict.TOO_MANY_PEERS
    assert guard.check(MAX_PEERS, 100, 1) is Verdict.TOO_MANY_PEERS  # nothing was kept
    assert guard.check(0, 100, 1) is Verdict.DUPLICATE  # the live sender kept its window
    assert guard.check(0, 100, 2) is Verdict.NEW


def test_forget_frees_a_slot_and_forgets_the_window():
    guard = ReplayGuard(max_peers=2)
    guard.check(1, 100, 1)
    guard.check(2, 100, 1)
    assert guard.check(3, 100, 1) is Verdict.TOO_MANY_PEERS
    guard.forget(1)
    guard.forget(99)  # never heard of: nothing to do
    assert guard.check(3, 100, 1) is Verdict.NEW
    assert guard.check(1, 100, 1) is Verdict.TOO_MANY_PEERS
    guard.forget(3)
    assert guard.check(1, 50, 1) is Verdict.NEW  # forgotten: an older epoch is news again


def test_100k_hostile_signed_frames_leave_the_honest_sender_heard():
    """Huge jumps, the last u64, alternating and future epochs and 10,000 node ids, all
    signed, around one honest sender: every check stays small and the sender is heard."""
    rng = random.Random(7)
    own, honest, epoch = 10**18, 1, 10**18 - 5
    limit = epoch_limit(own, 60.0)
    guard = ReplayGuard()
    verdicts: Counter[Verdict] = Counter()
    hostile = [
        lambda: (rng.randrange(2, 10_002), rng.choice((epoch - 1, epoch + 1)), rng.randrange(2**64)),
        lambda: (rng.randrange(2, 40), epoch, rng.choice((0, 2**30, 2**63, U64_MAX))),
        lambda: (honest, rng.choice((epoch - 1, limit + 1, U64_MAX)), rng.randrange(2**64)),
    ]

    def run() -> None:
        for seq in range(1, 100_001):
            if seq % 10 == 0:
                assert guard.check(honest, epoch, seq, max_epoch=limit) is Verdict.NEW
            else:
                node_id, frame_epoch, frame_seq = rng.choice(hostile)()
                verdicts[guard.check(node_id, frame_epoch, frame_seq, max_epoch=limit)] += 1

    assert guard.check(honest, epoch, 0, max_epoch=limit) is Verdict.NEW
    assert peak_bytes(run) < 64 * 1024  # 10,000 senders or one 2**30-bit window would not fit
    assert len(guard._windows) == MAX_PEERS
    assert windows_are_fixed_size(guard)
    assert verdicts[Verdict.TOO_MANY_PEERS] > 0 and verdicts[Verdict.FUTURE_EPOCH] > 0


class ReferenceGuard:
    """The replay rules as plainly as they can be said: a set of seen (epoch, seq) per sender."""

    def __init__(self, max_peers: int) -> None:
        self.max_peers = max_peers
        self.newest: dict[int, tuple[int, int]] = {}
        self.seen: dict[int, set[tuple[int, int]]] = {}

    def check(self, node_id: int, epoch: int, seq: int, max_epoch: int | None) -> Verdict:
        if max_epoch is not None and epoch > max_epoch:
            return Verdict.FUTURE_EPOCH
        if node_id not in self.newest and len(self.newest) >= self.max_peers:
            return Verdict.TOO_MANY_PEERS
        top_epoch, top = self.newest.get(node_id, (-1, -1))
        if epoch < top_epoch or (epoch == top_epoch and top - seq >= WINDOW):
            return Verdict.REPLAY
        if (epoch, seq) in self.seen.get(node_id, ()):
            return Verdict.DUPLICATE
        self.seen.setdefault(node_id, set()).add((epoch, seq))
        if (epoch, seq) > (top_epoch, top):
            self.newest[node_id] = (epoch, seq)
            return Verdict.NEW
        return Verdict.REORDERED

    def forget(self, node_id: int) -> None:
        self.newest.pop(node_id, None)
        self.seen.pop(node_id, None)


SEQS = st.one_of(st.integers(0, 200), st.integers(U64_MAX - 200, U64_MAX),
                 st.sampled_from([2**30, 2**63]))
OPS = st.one_of(
    st.tuples(st.just("check"), st.integers(1, 4), st.sampled_from([1, 2, 3, U64_MAX]), SEQS),
    st.tuples(st.just("forget"), st.integers(1, 4)),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(OPS, max_size=80), st.sampled_from([None, 2, 3]), st.integers(1, 4))
def test_guard_agrees_with_the_reference_model(ops, max_epoch, max_peers):
    guard, model = ReplayGuard(max_peers=max_peers), ReferenceGuard(max_peers)
    for op in ops:
        if op[0] == "forget":
            guard.forget(op[1])
            model.forget(op[1])
            continue
        _, node_id, epoch, seq = op
        expected = model.check(node_id, epoch, seq, max_epoch)
        assert guard.check(node_id, epoch, seq, max_epoch=max_epoch) is expected, op
    assert windows_are_fixed_size(guard)
