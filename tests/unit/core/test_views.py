"""Version-2 heartbeat frames: the ownership views of active/active blocks, and hostile bytes."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.ownership import View
from agent.core.states import State
from agent.core.views import BlockView, block_id, encode_views
from agent.core.wire import (
    FRAME_SIZE, MAX_FRAME_SIZE, REASONS, Frame, FrameError, FrameType, KeyRing, decode, encode,
)

KEY = (1, b"k" * 32)
RING = KeyRing((KEY,))
EPOCH = 1_700_000_000_000_000_000


def frame(*views: BlockView) -> Frame:
    return Frame(FrameType.ADVERT, 7, State.MASTER, 200, 50_000, EPOCH, 42, views=views)


def block_view(buckets: int = 256, owned=frozenset({0, 9, 255}), claiming=frozenset({3}), seen=None,
               name: str = "ext") -> BlockView:
    return BlockView(block_id(name), buckets, View(7, EPOCH, 5, 1.5, frozenset(owned), frozenset(claiming),
                                                    seen if seen is not None else {2: (EPOCH - 1, 11)}))


def resigned(data: bytes) -> bytes:
    """The same bytes with the MAC made valid again: what an insider could send."""
    body = data[:-32]
    return body + hmac.new(KEY[1], body, hashlib.sha256).digest()


def reason_of(data: bytes) -> str:
    with pytest.raises(FrameError) as info:
        decode(data, RING)
    return info.value.reason


def test_a_frame_with_views_is_version_2_and_comes_back_whole() -> None:
    sent = frame(block_view(), block_view(64, {1}, set(), {}, name="int"))
    data = encode(sent, RING)
    assert data[2] == 2 and len(data) > FRAME_SIZE
    assert decode(data, RING) == sent
    # Without views it stays a 64-byte version-1 frame, which every version reads.
    plain = frame()
    assert len(encode(plain, RING)) == FRAME_SIZE and encode(plain, RING)[2] == 1


views = st.builds(
    lambda buckets, data, weight, generation, seen: BlockView(
        block_id(f"b{generation}"), buckets,
        View(7, EPOCH, generation, weight / 1000, frozenset(b for b in data if b < buckets and b % 2),
             frozenset(b for b in data if b < buckets and not b % 2), seen)),
    st.integers(1, 1024), st.sets(st.integers(0, 1023), max_size=40), st.integers(0, 1_000_000),
    st.integers(0, 2**32 - 1),
    st.dictionaries(st.integers(0, 2**32 - 1), st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)),
                    max_size=7))


@settings(max_examples=200, deadline=None)
@given(st.lists(views, max_size=3, unique_by=lambda v: v.block_id))
def test_any_views_that_fit_come_back_whole(items) -> None:
    sent = frame(*items)
    try:
        data = encode(sent, RING)
    except ValueError:
        assert FRAME_SIZE + len(encode_views(items)) > MAX_FRAME_SIZE
        return
    assert decode(data, RING) == sent


def test_a_frame_too_big_to_send_unfragmented_is_refused() -> None:
    with pytest.raises(ValueError, match="over"):
        encode(frame(*(block_view(1024, name=str(i)) for i in range(6))), RING)
    assert reason_of(b"\0" * (MAX_FRAME_SIZE + 1)) == "long"


def test_every_cut_of_a_version_2_frame_is_refused() -> None:
    data = encode(frame(block_view()), RING)
    for length in range(len(data)):
        assert reason_of(data[:length]) in ("short", "auth")
    # Cut inside the signed part and signed again: the section no longer parses.
    for length in range(32, len(data) - 32):
        assert reason_of(resigned(data[:length] + bytes(32))) in ("short", "views")


def with_section(section: bytes) -> bytes:
    head = encode(frame(block_view()), RING)[:32]
    body = head + section
    return body + hmac.new(KEY[1], body, hashlib.sha256).digest()


def record(buckets: int = 16, seen_count: int = 0, reserved: int = 0, block: int = 1, weight: int = 1000) -> bytes:
    return struct.pack(">IIIHBB", block, 1, weight, buckets, seen_count, reserved)


@pytest.mark.parametrize("what, section", [
    ("a bit past the last bucket", b"\x01" + record(12) + b"\x00\x10" + b"\x00\x00"),
    ("owned and claimed at once", b"\x01" + record() + b"\x01\x00" + b"\x01\x00"),
    ("the same block twice", b"\x02" + (record() + bytes(4)) * 2),
    ("bytes after the last view", b"\x01" + record() + bytes(4) + b"\x00"),
    ("a view missing", b"\x02" + record() + bytes(4)),
    ("a reserved byte set", b"\x01" + record(reserved=1) + bytes(4)),
    ("no buckets", b"\x01" + record(0)),
    ("a weight over the maximum", b"\x01" + record(weight=10**9) + bytes(4)),
    ("a node seen twice", b"\x01" + record(seen_count=2) + bytes(4) + struct.pack(">IQI", 3, 1, 1) * 2),
    ("too many views", b"\xff"),
    ("an empty section", b""),
])
def test_a_signed_but_malformed_section_is_dropped_as_views(what: str, section: bytes) -> None:
    expected = "short" if not section else "views"
    assert reason_of(with_section(section)) == expected, what


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_signed_random_sections_only_raise_frame_error(section) -> None:
    try:
        decode(with_section(section), RING)
    except FrameError as error:
        assert error.reason in REASONS
