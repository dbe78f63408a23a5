import hashlib
import hmac
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.syncwire import (
    DEFAULT_DATAGRAM_SIZE, FLAG_ENCRYPTED, FLAG_RESYNC_BEGIN, FLAG_RESYNC_END, HEADER, HEADER_SIZE,
    MAC_SIZE, MAX_DATAGRAM_SIZE, MAX_NACK_RANGES, REASONS, RECORD_SIZE, SyncFrame, SyncFrameError, SyncType,
    decode, encode, encryption, max_records,
)
from agent.core.wire import KeyRing

KEY_A = (1, b"a" * 32)
KEY_B = (2, b"b" * 32)
RING = KeyRing((KEY_A,))
EPOCH = 1_700_000_000_000_000_000
RECORDS = bytes(range(96)) * 3
DATA = SyncFrame(SyncType.DATA, node_id=7, epoch=EPOCH, serial=9, seq=5, ack=3, ack_epoch=EPOCH + 1,
                 flags=FLAG_RESYNC_BEGIN, payload=RECORDS)


def reason_of(data: bytes, ring: KeyRing = RING, opener=None) -> str:
    with pytest.raises(SyncFrameError) as info:
        decode(data, ring, opener)
    assert info.value.reason in REASONS
    return info.value.reason


def signed(body: bytes, key: bytes = KEY_A[1]) -> bytes:
    """A frame with a valid MAC around hand-made bytes (the checks after the MAC)."""
    return body + hmac.new(key, body, hashlib.sha256).digest()


def header(**over: int) -> bytes:
    fields = dict(version=1, kind=1, key_id=1, flags=0, node_id=7, epoch=EPOCH, serial=1, seq=1, ack=0,
                  ack_epoch=EPOCH + 1, count=1)
    fields.update(over)
    return HEADER.pack(b"DS", fields["version"], fields["kind"], fields["key_id"], fields["flags"],
                       fields["node_id"], fields["epoch"], fields["serial"], fields["seq"], fields["ack"],
                       fields["ack_epoch"], fields["count"])


# -- round trips and sizes ------------------------------------------------------

def test_data_round_trip():
    data = encode(DATA, RING)
    assert len(data) == HEADER_SIZE + 3 * RECORD_SIZE + MAC_SIZE
    assert decode(data, RING) == DATA
    assert decode(data, RING).count == 3


@pytest.mark.parametrize("kind", [SyncType.ACK, SyncType.HELLO, SyncType.RESYNC_REQUEST])
def test_control_round_trip(kind):
    frame = SyncFrame(kind, 7, EPOCH, serial=2, seq=40, ack=11, ack_epoch=EPOCH + 1)
    assert decode(encode(frame, RING), RING) == frame


def test_nack_round_trip():
    ranges = tuple((10 * i + 1, 10 * i + 5) for i in range(MAX_NACK_RANGES))
    frame = SyncFrame(SyncType.NACK, 7, EPOCH, serial=3, seq=0, ack=0, ack_epoch=EPOCH + 1, ranges=ranges)
    assert decode(encode(frame, RING), RING) == frame


def test_a_hello_before_contact_has_no_ack_epoch():
    frame = SyncFrame(SyncType.HELLO, 7, EPOCH, serial=1, seq=0)
    assert decode(encode(frame, RING), RING) == frame


def test_an_empty_resync_is_one_frame():
    frame = SyncFrame(SyncType.DATA, 7, EPOCH, 1, 1, 0, EPOCH + 1, FLAG_RESYNC_BEGIN | FLAG_RESYNC_END)
    assert decode(encode(frame, RING), RING) == frame


def test_max_records_fill_a_datagram_without_going_over():
    assert max_records() == max_records(DEFAULT_DATAGRAM_SIZE) == 14
    assert max_records(MAX_DATAGRAM_SIZE) == 676
    for size in (DEFAULT_DATAGRAM_SIZE, 9000, MAX_DATAGRAM_SIZE):
        for encrypted in (False, True):
            n = max_records(size, encrypted=encrypted)
            frame = SyncFrame(SyncType.DATA, 7, EPOCH, 1, 1, 0, EPOCH + 1, payload=b"\0" * RECORD_SIZE * n)
            sealer = encryption(RING) if encrypted else None
            assert len(encode(frame, RING, sealer)) <= size < len(encode(frame, RING, sealer)) + RECORD_SIZE
    with pytest.raises(ValueError):
        max_records(MAX_DATAGRAM_SIZE + 1)
    with pytest.raises(ValueError):
        max_records(100)


def test_any_key_of_the_ring_verifies_and_the_first_signs():
    old, new = KeyRing((KEY_A, KEY_B)), KeyRing((KEY_B, KEY_A))
    data = encode(DATA, new)
    assert data[4] == KEY_B[0]
    assert decode(data, old) == DATA
    assert reason_of(data, RING) == "key_id"


@pytest.mark.parametrize("frame", [
    SyncFrame(SyncType.DATA, 7, EPOCH, 1, 0, 0, EPOCH + 1, payload=RECORDS),  # seq 0
    SyncFrame(SyncType.DATA, 7, EPOCH, 1, 1, 0, 0, payload=RECORDS),  # DATA for nobody
    SyncFrame(SyncType.DATA, 7, EPOCH, 1, 1, 0, EPOCH + 1),  # no records, no resync flag
    SyncFrame(SyncType.DATA, 7, EPOCH, 1, 1, 0, EPOCH + 1, payload=b"x" * 95),
    SyncFrame(SyncType.DATA, 7, EPOCH, 1, 1, 0, EPOCH + 1, flags=0x40, payload=RECORDS),
    SyncFrame(SyncType.DATA, 7, EPOCH, 1, 1, 0, EPOCH + 1, flags=FLAG_ENCRYPTED, payload=RECORDS),
    SyncFrame(SyncType.ACK, 7, EPOCH, 1, 1, ack=3, ack_epoch=0),  # an ack of no stream
    SyncFrame(SyncType.ACK, 7, EPOCH, 0, 1),  # serial 0
    SyncFrame(SyncType.ACK, 7, 0, 1, 1),  # epoch 0
    SyncFrame(SyncType.ACK, 7, EPOCH, 1, 1, flags=FLAG_RESYNC_END),
    SyncFrame(SyncType.HELLO, 7, EPOCH, 1, 1, payload=RECORDS),
    SyncFrame(SyncType.RESYNC_REQUEST, 7, EPOCH, 1, 1),  # asks nobody
    SyncFrame(SyncType.NACK, 7, EPOCH, 1, 1, 0, EPOCH + 1),  # no ranges
    SyncFrame(SyncType.NACK, 7, EPOCH, 1, 1, 0, EPOCH + 1, ranges=((5, 4),)),
    SyncFrame(SyncType.NACK, 7, EPOCH, 1, 1, 0, EPOCH + 1, ranges=((0, 4),)),
    SyncFrame(SyncType.NACK, 7, EPOCH, 1, 1, 0, EPOCH + 1, ranges=((1, 4), (4, 6))),
    SyncFrame(SyncType.NACK, 7, EPOCH, 1, 1, 0, EPOCH + 1, ranges=((1, 1),) * 2),
    SyncFrame(SyncType.NACK, 7, 2**64, 1, 1, 0, EPOCH + 1, ranges=((1, 1),)),
])
def test_encode_refuses_what_decode_would(frame):
    with pytest.raises(ValueError):
        encode(frame, RING)


# -- hostile bytes ------------------------------------------------------------------

def test_unauthenticated_reasons():
    data = encode(DATA, RING)
    assert reason_of(data[:HEADER_SIZE + MAC_SIZE - 1]) == "short"
    assert reason_of(data + b"\0" * MAX_DATAGRAM_SIZE) == "long"
    assert reason_of(b"XS" + data[2:]) == "magic"
    assert reason_of(data[:2] + b"\x02" + data[3:]) == "version"
    assert reason_of(data[:4] + b"\x09" + data[5:]) == "key_id"
    assert reason_of(data[:-1] + bytes([data[-1] ^ 1])) == "auth"
    assert reason_of(data[:-MAC_SIZE - RECORD_SIZE] + data[-MAC_SIZE:]) == "auth"  # truncated
    assert reason_of(encode(DATA, KeyRing(((1, b"other"),)))) == "auth"


@given(st.integers(0, 2000), st.integers(0, 7))
def test_any_bit_flip_is_auth_or_earlier(position, bit):
    data = bytearray(encode(DATA, RING))
    position %= len(data)
    data[position] ^= 1 << bit
    assert reason_of(bytes(data)) in {"magic", "version", "key_id", "auth"}


@pytest.mark.parametrize("body,reason", [
    (header(kind=0) + RECORDS[:96], "type"),
    (header(kind=6) + RECORDS[:96], "type"),
    (header(flags=0x10) + RECORDS[:96], "flags"),
    (header(kind=2, flags=1, count=0), "flags"),
    (header(count=2) + RECORDS[:96], "count"),
    (header(count=1) + RECORDS[:100], "count"),
    (header(count=0), "count"),
    (header(seq=0) + RECORDS[:96], "field"),
    (header(ack_epoch=0) + RECORDS[:96], "field"),
    (header(epoch=0) + RECORDS[:96], "field"),
    (header(serial=0) + RECORDS[:96], "field"),
    (header(kind=2, count=1), "count"),
    (header(kind=2, count=0) + b"x", "count"),
    (header(kind=2, count=0, ack=5, ack_epoch=0), "field"),
    (header(kind=4, count=0, ack_epoch=0), "field"),
    (header(kind=3, count=0), "count"),
    (header(kind=3, count=MAX_NACK_RANGES + 1) + struct.pack(">QQ", 1, 1) * (MAX_NACK_RANGES + 1), "count"),
    (header(kind=3, count=2) + struct.pack(">QQ", 1, 1), "count"),
    (header(kind=3, count=1) + struct.pack(">QQ", 3, 2), "ranges"),
    (header(kind=3, count=1) + struct.pack(">QQ", 0, 2), "ranges"),
    (header(kind=3, count=2) + struct.pack(">QQQQ", 5, 9, 2, 3), "ranges"),
    (header(kind=3, count=2) + struct.pack(">QQQQ", 1, 4, 4, 5), "ranges"),
    (header(flags=FLAG_ENCRYPTED) + RECORDS[:96], "count"),  # no tag
    (header(flags=FLAG_ENCRYPTED) + RECORDS[:96] + b"t" * 16, "decrypt"),  # no opener
])
def test_authenticated_but_malformed(body, reason):
    assert reason_of(signed(body)) == reason


@settings(max_examples=300)
@given(st.binary(max_size=3000))
def test_random_bytes_raise_only_frame_errors(data):
    reason_of(data)


@settings(max_examples=500)
@given(kind=st.integers(0, 7), flags=st.integers(0, 255), count=st.integers(0, 40),
       ints=st.lists(st.sampled_from([0, 1, 2, 5, 2**63, 2**64 - 1]), min_size=6, max_size=6),
       body=st.binary(max_size=800))
def test_signed_garbage_decodes_to_a_valid_frame_or_a_reason(kind, flags, count, ints, body):
    data = signed(header(kind=kind, flags=flags, count=count, epoch=ints[0], serial=ints[1], seq=ints[2],
                         ack=ints[3], ack_epoch=ints[4], node_id=ints[5] % 2**32) + body)
    try:
        frame = decode(data, RING)
    except SyncFrameError as error:
        assert error.reason in REASONS
        return
    assert encode(frame, RING) == data


# -- encryption ------------------------------------------------------------------------

def test_sealed_data_round_trip_and_the_records_are_not_readable():
    sealer = encryption(RING)
    data = encode(DATA, RING, sealer)
    assert RECORDS[:32] not in data
    frame = decode(data, RING, encryption(RING))
    assert frame.payload == RECORDS and frame.flags == DATA.flags | FLAG_ENCRYPTED
    assert reason_of(data) == "decrypt"  # a receiver that does not decrypt


def test_sealed_data_for_another_stream_does_not_open():
    """Same ring, re-signed with another receiver epoch: the derived key differs."""
    sealed = encode(DATA, RING, encryption(RING))[:-MAC_SIZE]
    moved = sealed[:40] + struct.pack(">Q", EPOCH + 2) + sealed[48:]
    assert reason_of(signed(moved), opener=encryption(RING)) == "decrypt"
