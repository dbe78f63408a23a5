import hashlib
import hmac
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.states import State
from agent.core.wire import (
    FLAG_YIELD, FRAME_SIZE, REASONS, Frame, FrameError, FrameType, KeyRing, ReplayGuard,
    Verdict, decode, encode,
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
    assert reason_of(signed(header(version=2))) == "version"


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
