"""Gratuitous ARP and unsolicited neighbour advertisement frames, as bytes.

The native sender (native/garp.c) builds the same frames from one template
per round; this module is the readable reference for those bytes, the frame
source of the pure-Python baseline, and what the tests compare C against.
"""

from __future__ import annotations

import struct

BROADCAST_MAC = b"\xff" * 6
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"
ALL_NODES_IP6 = bytes.fromhex("ff020000000000000000000000000001")
ZERO_MAC = b"\x00" * 6

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ARPOP_REQUEST = 1
ARPOP_REPLY = 2
ICMPV6_NA = 136
NA_ROUTER = 0x80
NA_OVERRIDE = 0x20
# RFC 4861 7.1.2: receivers drop neighbour discovery with any other hop limit.
ND_HOP_LIMIT = 255
ND_OPT_TARGET_LLADDR = 2

_ARP_HEADER = struct.pack("!HHBB", 1, 0x0800, 6, 4)


def _ethernet(dst: bytes, src: bytes, ethertype: int) -> bytes:
    return dst + src + struct.pack("!H", ethertype)


def _gratuitous_arp(op: int, src_mac: bytes, address: bytes, target_mac: bytes) -> bytes:
    header = _ethernet(BROADCAST_MAC, src_mac, ETH_P_ARP) + _ARP_HEADER + struct.pack("!H", op)
    return header + src_mac + address + target_mac + address


def arp_request(src_mac: bytes, address: bytes) -> bytes:
    """RFC 5227 ARP announcement: a broadcast request with sender = target = address."""
    return _gratuitous_arp(ARPOP_REQUEST, src_mac, address, ZERO_MAC)


def arp_reply(src_mac: bytes, address: bytes) -> bytes:
    """Broadcast gratuitous reply; Linux counts it as gratuitous only with a broadcast target MAC."""
    return _gratuitous_arp(ARPOP_REPLY, src_mac, address, BROADCAST_MAC)


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmpv6_checksum(src: bytes, dst: bytes, message: bytes) -> int:
    """ICMPv6 checksum over the IPv6 pseudo header (RFC 8200 8.1) and the message."""
    pseudo = src + dst + struct.pack("!I3xB", len(message), 58)
    return checksum(pseudo + message)


def neighbour_advert(src_mac: bytes, address: bytes, router: bool = False) -> bytes:
    """Unsolicited NA for address to all nodes, override set, with our link-layer address."""
    flags = NA_OVERRIDE | (NA_ROUTER if router else 0)
    option = struct.pack("!BB", ND_OPT_TARGET_LLADDR, 1) + src_mac
    unsummed = struct.pack("!BBHB3x", ICMPV6_NA, 0, 0, flags) + address + option
    csum = icmpv6_checksum(address, ALL_NODES_IP6, unsummed)
    message = unsummed[:2] + struct.pack("!H", csum) + unsummed[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(message), 58, ND_HOP_LIMIT) + address + ALL_NODES_IP6
    return _ethernet(ALL_NODES_MAC, src_mac, ETH_P_IPV6) + ip6 + message
