"""The flow hash, bit-exact with the kernel's nft `jhash <fields> mod B seed S offset O`.

The nft rule, the XDP filter and this module must put every flow in the same
bucket, or two nodes both accept a flow (or neither does). So this is not "a
hash like the kernel's": it is the kernel's `jhash(data, len, seed)` from
include/linux/jhash.h (Bob Jenkins' lookup3 `hashlittle`), over the very bytes
nft_hash.c hashes, then `reciprocal_scale(hash, B) = (hash * B) >> 32` plus
the offset: the bucket comes from the hash's high bits, not from `hash % B`.

What nft hashes is its source register, `len` bytes of it. nft lays a
concatenation out one field per 32-bit register, each field padded to 4 bytes,
and a 2-byte port load zeroes the rest of its register (nft_payload_eval), so
(checked with `nft --debug=netlink` on nftables 1.0.6 and against the kernel
in tests/netns/test_bucket_parity.py):

    fields                                   IPv4 bytes      IPv6 bytes
    source address                           saddr (4)       saddr (16)
    source address, source port              + sport 00 00   (8)   (20)
    source address, both ports               + dport 00 00   (12)  (24)

addresses and ports in network byte order, as in the packet. These are the
hash modes CLUSTERIP offered (sourceip, sourceip-sourceport,
sourceip-sourceport-destport). At netdev ingress there is no conntrack to
say which end started a flow: for a stateful firewall in active/active, hash
the outside peer's address (the source on the way in, the destination on the
way out), so that both directions of a flow land on one node.

Ports count only for TCP and UDP packets that are no fragments (flow_fields());
any other packet is hashed on its source address alone. Elsewhere the port bytes
are something else (ICMP's checksum would scatter one ping over buckets), and a
non-first fragment has no ports at all (where they would be, Linux 6.18's nft
`th sport` reads the fragment's data, or for IPv6 the start of the IP header):
hashing the first fragment on its source too keeps every fragment of a datagram
in one bucket. A fragment is IPv4 with MF or a non-zero offset (DF does not
count), or IPv6 with a Fragment header, the first fragment included: nft's
`ip frag-off & 0x3fff != 0` and `exthdr frag exists`.

jhash reads whole 12-byte blocks (all but the last) in CPU byte order, and the
last block byte by byte as little-endian, so results for keys over 12 bytes
(IPv6) depend on the host's endianness, exactly as the kernel's do.
"""

from __future__ import annotations

import struct
import sys
from enum import Enum
from ipaddress import IPv4Address, IPv6Address

JHASH_INITVAL = 0xDEADBEEF
_U32 = 0xFFFFFFFF
_BLOCK = struct.Struct("<3I" if sys.byteorder == "little" else ">3I")
_LAST_BLOCK = struct.Struct("<3I")


class HashFields(Enum):
    """What identifies a flow for the hash; the values are CLUSTERIP's hashmode names."""

    SOURCE = "sourceip"
    SOURCE_PORT = "sourceip-sourceport"
    SOURCE_PORTS = "sourceip-sourceport-destport"


# The protocols whose packets are hashed with their ports, when the fields include them.
PORT_PROTOCOLS = frozenset({6, 17})  # TCP, UDP


def flow_fields(fields: HashFields, protocol: int, fragment: bool) -> HashFields:
    """The fields a packet is actually hashed on: `fields` for a TCP or UDP packet
    that is no fragment, the source address alone for any other. `protocol` is the
    IP protocol (IPv6: the upper-layer header's, after any extension headers)."""
    if not isinstance(fields, HashFields):
        raise ValueError(f"fields must be a HashFields, not {fields!r}")
    if not isinstance(protocol, int) or isinstance(protocol, bool) or not 0 <= protocol <= 0xFF:
        raise ValueError(f"protocol must be an IP protocol number 0..255, not {protocol!r}")
    if not isinstance(fragment, bool):
        raise ValueError(f"fragment must be True or False, not {fragment!r}")
    if protocol in PORT_PROTOCOLS and not fragment:
        return fields
    return HashFields.SOURCE


def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _U32


def jhash(data: bytes, seed: int) -> int:
    """The kernel's jhash(data, len(data), seed), a 32-bit value."""
    length = len(data)
    a = b = c = (JHASH_INITVAL + length + seed) & _U32
    pos = 0
    # All but the last block: __jhash_mix.
    while length - pos > 12:
        x, y, z = _BLOCK.unpack_from(data, pos)
        a, b, c = (a + x) & _U32, (b + y) & _U32, (c + z) & _U32
        a = ((a - c) & _U32) ^ _rol(c, 4)
        c = (c + b) & _U32
        b = ((b - a) & _U32) ^ _rol(a, 6)
        a = (a + c) & _U32
        c = ((c - b) & _U32) ^ _rol(b, 8)
        b = (b + a) & _U32
        a = ((a - c) & _U32) ^ _rol(c, 16)
        c = (c + b) & _U32
        b = ((b - a) & _U32) ^ _rol(a, 19)
        a = (a + c) & _U32
        c = ((c - b) & _U32) ^ _rol(b, 4)
        b = (b + a) & _U32
        pos += 12
    if pos == length:
        # Only the empty key ends here: the kernel skips the final mix.
        return c
    # The last 1..12 bytes, zero-padded, as little-endian words: __jhash_final.
    x, y, z = _LAST_BLOCK.unpack(data[pos:].ljust(12, b"\0"))
    a, b, c = (a + x) & _U32, (b + y) & _U32, (c + z) & _U32
    c = ((c ^ b) - _rol(b, 14)) & _U32
    a = ((a ^ c) - _rol(c, 11)) & _U32
    b = ((b ^ a) - _rol(a, 25)) & _U32
    c = ((c ^ b) - _rol(b, 16)) & _U32
    a = ((a ^ c) - _rol(c, 4)) & _U32
    b = ((b ^ a) - _rol(a, 14)) & _U32
    c = ((c ^ b) - _rol(b, 24)) & _U32
    return c


def _port(port: int | None, name: str) -> bytes:
    if port is None or not 0 <= port <= 0xFFFF:
        raise ValueError(f"{name} must be a port number 0..65535, not {port!r}")
    # A 2-byte field in a 4-byte nft register, zero-padded.
    return port.to_bytes(2, "big") + b"\0\0"


def hash_key(fields: HashFields, src: IPv4Address | IPv6Address, sport: int | None = None,
             dport: int | None = None) -> bytes:
    """The bytes nft puts in the source register of `jhash <fields>` for this flow."""
    key = src.packed
    if fields is HashFields.SOURCE:
        return key
    key += _port(sport, "sport")
    if fields is HashFields.SOURCE_PORT:
        return key
    return key + _port(dport, "dport")


def bucket(fields: HashFields, src: IPv4Address | IPv6Address, sport: int | None, dport: int | None,
           buckets: int, seed: int, offset: int = 0) -> int:
    """The value of nft `jhash <fields> mod <buckets> seed <seed> offset <offset>` for this flow."""
    if not 1 <= buckets <= _U32:
        raise ValueError(f"buckets must be 1..{_U32}, not {buckets}")
    if not 0 <= seed <= _U32:
        raise ValueError(f"seed must be a 32-bit value, not {seed:#x}")
    return ((jhash(hash_key(fields, src, sport, dport), seed) * buckets) >> 32) + offset
