"""GARP / NA frame bytes, checked field by field with scapy's dissectors."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from agent.core import frames

MAC = bytes.fromhex("020000aabbcc")
MAC_TEXT = "02:00:00:aa:bb:cc"
V4 = ipaddress.IPv4Address("198.18.3.7")
V6 = ipaddress.IPv6Address("2001:db8::1:2")


def test_arp_request_is_an_rfc5227_announcement() -> None:
    frame = Ether(frames.arp_request(MAC, V4.packed))
    assert frame.dst == "ff:ff:ff:ff:ff:ff"
    assert frame.src == MAC_TEXT
    arp = frame[ARP]
    assert (arp.hwtype, arp.ptype, arp.hwlen, arp.plen, arp.op) == (1, 0x0800, 6, 4, 1)
    assert arp.hwsrc == MAC_TEXT
    assert arp.psrc == arp.pdst == str(V4)
    assert arp.hwdst == "00:00:00:00:00:00"
    assert len(frames.arp_request(MAC, V4.packed)) == 42


def test_arp_reply_has_broadcast_target_so_linux_treats_it_as_gratuitous() -> None:
    arp = Ether(frames.arp_reply(MAC, V4.packed))[ARP]
    assert arp.op == 2
    assert arp.hwsrc == MAC_TEXT
    assert arp.psrc == arp.pdst == str(V4)
    assert arp.hwdst == "ff:ff:ff:ff:ff:ff"


@pytest.mark.parametrize("router", [False, True])
def test_neighbour_advert_fields(router: bool) -> None:
    frame = Ether(frames.neighbour_advert(MAC, V6.packed, router=router))
    assert frame.dst == "33:33:00:00:00:01"
    assert frame.src == MAC_TEXT
    ip6 = frame[IPv6]
    assert (ip6.nh, ip6.hlim, ip6.plen) == (58, 255, 32)
    assert ip6.src == str(V6)
    assert ip6.dst == "ff02::1"
    na = frame[ICMPv6ND_NA]
    assert (na.R, na.S, na.O) == (int(router), 0, 1)
    assert na.tgt == str(V6)
    assert frame[ICMPv6NDOptDstLLAddr].lladdr == MAC_TEXT


def _recomputed_checksum(raw: bytes) -> int:
    frame = Ether(raw)
    del frame[ICMPv6ND_NA].cksum
    return Ether(bytes(frame))[ICMPv6ND_NA].cksum


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=6, max_size=6), st.booleans())
def test_neighbour_advert_checksum_matches_scapy(address: bytes, mac: bytes, router: bool) -> None:
    raw = frames.neighbour_advert(mac, address, router=router)
    assert Ether(raw)[ICMPv6ND_NA].cksum == _recomputed_checksum(raw)


def test_checksum_of_odd_length_pads_with_zero() -> None:
    assert frames.checksum(b"\x01") == frames.checksum(b"\x01\x00")
