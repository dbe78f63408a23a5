"""The ownership views of active/active blocks, as the section a version-2 heartbeat frame carries.

Every byte is hostile: `decode_views` returns views whose every field is in
range, or raises ValueError naming what is wrong; the frame codec
(agent.core.wire) calls it only after the frame's MAC checked out, and turns
the error into its "views" drop reason. The epoch of every view is the frame's.

Layout, big-endian: a count (u8) of records, then per record

     0  block id      u32   first 4 bytes of BLAKE2b(block name): names stay out of the frame
     4  generation    u32
     8  weight        u32   thousandths
    12  buckets       u16
    14  seen count    u8
    15  reserved      u8    0
    16  owned         ceil(buckets / 8) bytes, bucket b in bit b % 8 of byte b // 8
        claiming      the same
        seen          per entry: node id u32, epoch u64, generation u32

and nothing after the last record.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from agent.core.ownership import MAX_WEIGHT, View

_RECORD = struct.Struct(">IIIHBB")
_SEEN = struct.Struct(">IQI")
MAX_VIEWS = 64
MAX_BUCKETS = 1 << 16
MAX_SEEN = 64


def view_size(buckets: int, peers: int) -> int:
    """The bytes one block's view takes in a frame."""
    return _RECORD.size + 2 * ((buckets + 7) // 8) + peers * _SEEN.size


def block_id(name: str) -> int:
    """The 32-bit id a block's views travel under."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big")


@dataclass(frozen=True)
class BlockView:
    block_id: int
    buckets: int
    view: View


def _bitmap(buckets: int, members: frozenset[int]) -> bytes:
    out = bytearray((buckets + 7) // 8)
    for b in members:
        if not 0 <= b < buckets:
            raise ValueError(f"bucket {b} outside 0..{buckets - 1}")
        out[b // 8] |= 1 << (b % 8)
    return bytes(out)


def _members(data: bytes, buckets: int, what: str) -> frozenset[int]:
    found = frozenset(i * 8 + bit for i, byte in enumerate(data) for bit in range(8) if byte >> bit & 1)
    if found and max(found) >= buckets:
        raise ValueError(f"{what}: a bit set past bucket {buckets - 1}")
    return found


def encode_views(views: Sequence[BlockView]) -> bytes:
    if len(views) > MAX_VIEWS:
        raise ValueError(f"at most {MAX_VIEWS} views per frame, not {len(views)}")
    parts = [bytes([len(views)])]
    for item in views:
        view = item.view
        if not 1 <= item.buckets <= MAX_BUCKETS or len(view.seen) > MAX_SEEN:
            raise ValueError(f"view of block {item.block_id:#x}: {item.buckets} buckets, {len(view.seen)} seen")
        parts.append(_RECORD.pack(item.block_id, view.generation, round(view.weight * 1000), item.buckets,
                                  len(view.seen), 0))
        parts.append(_bitmap(item.buckets, view.owned))
        parts.append(_bitmap(item.buckets, view.claiming))
        parts.extend(_SEEN.pack(node, epoch, generation) for node, (epoch, generation) in sorted(view.seen.items()))
    return b"".join(parts)


def decode_views(data: bytes, node_id: int, epoch: int) -> tuple[BlockView, ...]:
    """The views of a frame from `node_id`, run `epoch`; ValueError says what is wrong."""
    if not data:
        raise ValueError("no view count")
    count, pos = data[0], 1
    if count > MAX_VIEWS:
        raise ValueError(f"{count} views, more than {MAX_VIEWS}")
    views: list[BlockView] = []
    for index in range(count):
        if len(data) - pos < _RECORD.size:
            raise ValueError(f"view {index}: cut short in its header")
        block, generation, weight, buckets, seen_count, reserved = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        if not 1 <= buckets <= MAX_BUCKETS or reserved or seen_count > MAX_SEEN or weight > MAX_WEIGHT * 1000:
            raise ValueError(f"view {index}: field out of range")
        size = (buckets + 7) // 8
        if len(data) - pos < 2 * size + seen_count * _SEEN.size:
            raise ValueError(f"view {index}: cut short in its buckets or seen list")
        owned = _members(data[pos:pos + size], buckets, f"view {index} owned")
        claiming = _members(data[pos + size:pos + 2 * size], buckets, f"view {index} claiming")
        if owned & claiming:
            raise ValueError(f"view {index}: buckets both owned and claimed")
        pos += 2 * size
        seen: dict[int, tuple[int, int]] = {}
        for _ in range(seen_count):
            node, seen_epoch, seen_generation = _SEEN.unpack_from(data, pos)
            pos += _SEEN.size
            if node in seen:
                raise ValueError(f"view {index}: node {node} seen twice")
            seen[node] = (seen_epoch, seen_generation)
        if any(v.block_id == block for v in views):
            raise ValueError(f"view {index}: block {block:#x} twice")
        views.append(BlockView(block, buckets, View(node_id, epoch, generation, weight / 1000, owned, claiming, seen)))
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} bytes after the last view")
    return tuple(views)
