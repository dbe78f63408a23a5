"""The native GARP / NA sender on a real kernel: frames on the wire, pacing,
cancel, interface errors, and neighbour caches that actually move."""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass

import pytest

from agent.core import frames
from agent.dataplane.garp import AnnounceTarget, ArpMode, CancelFlag, Sender

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_OUTGOING = 4
TP_STATUS_VLAN_VALID = 0x10
AUXDATA = struct.Struct("IIIHHHH")
OLD_MAC = "02:00:00:00:0e:1d"


@dataclass(frozen=True)
class Captured:
    data: bytes
    vlan: int | None


@dataclass(frozen=True)
class Link:
    ours: str
    peer: str
    ifname: str
    peer_ifname: str


def v4_block(count: int, base: str = "198.18.0.1") -> list[ipaddress.IPv4Address]:
    start = ipaddress.IPv4Address(base)
    return [start + i for i in range(count)]


def v6_block(count: int, base: str = "2001:db8:1::1") -> list[ipaddress.IPv6Address]:
    start = ipaddress.IPv6Address(base)
    return [start + i * 0x10001 for i in range(count)]


def mac_of(netns_factory, netns: str, ifname: str) -> bytes:
    link = json.loads(netns_factory.ip("-j", "link", "show", ifname, netns=netns))[0]
    return bytes.fromhex(link["address"].replace(":", ""))


@pytest.fixture
def link(netns_factory) -> Link:
    ours, peer = netns_factory("dpt-garp"), netns_factory("dpt-peer")
    netns_factory.ip("link", "add", "g0", "type", "veth", "peer", "name", "p0", "netns", peer, netns=ours)
    netns_factory.ip("link", "set", "g0", "up", netns=ours)
    netns_factory.ip("link", "set", "p0", "up", netns=peer)
    return Link(ours, peer, "g0", "p0")


def add_vlan(netns_factory, link: Link) -> Link:
    """g0.100 on our side; the kernel tags, the peer's p0 sees the 802.1Q tag."""
    try:
        netns_factory.ip("link", "add", "link", "g0", "name", "g0.100", "type", "vlan", "id", "100", netns=link.ours)
    except RuntimeError as exc:
        if "Unknown device type" in str(exc):
            pytest.skip("kernel built without 802.1Q VLAN support (CONFIG_VLAN_8021Q)")
        raise
    netns_factory.ip("link", "set", "g0.100", "up", netns=link.ours)
    return Link(link.ours, link.peer, "g0.100", "p0")


@pytest.fixture
def vlan_link(netns_factory, link: Link) -> Link:
    return add_vlan(netns_factory, link)


class Capture:
    """An AF_PACKET socket on the peer interface, with VLAN tags from PACKET_AUXDATA."""

    def __init__(self, netns_factory, link: Link) -> None:
        with netns_factory.enter(link.peer):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
        self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self.sock.bind((link.peer_ifname, ETH_P_ALL))

    def drain(self, quiet: float = 0.3) -> list[Captured]:
        got: list[Captured] = []
        self.sock.settimeout(quiet)
        while True:
            try:
                data, anc, _flags, addr = self.sock.recvmsg(2048, socket.CMSG_SPACE(AUXDATA.size))
            except TimeoutError:
                return got
            if addr[2] == PACKET_OUTGOING:
                continue
            vlan = None
            for level, kind, payload in anc:
                if level == SOL_PACKET and kind == PACKET_AUXDATA:
                    status, *_rest, tci, _tpid = AUXDATA.unpack(payload[: AUXDATA.size])
                    if status & TP_STATUS_VLAN_VALID:
                        vlan = tci & 0xFFF
            got.append(Captured(data, vlan))

    def close(self) -> None:
        self.sock.close()


def captured_round(netns_factory, link: Link, sender: Sender, target: AnnounceTarget) -> tuple:
    """One round of `sender`, and every frame the peer saw during it."""
    capture = Capture(netns_factory, link)
    try:
        result = sender.send_round(target)
        return result, capture.drain()
    finally:
        capture.close()


def announce(netns_factory, link: Link, target: AnnounceTarget, **kwargs) -> tuple:
    with netns_factory.enter(link.ours):
        sender = Sender(link.ifname, **kwargs)
    with sender:
        return captured_round(netns_factory, link, sender, target)


def expect_exact(captured: list[Captured], expected: set[bytes], vlan: int | None) -> None:
    relevant = [c for c in captured if c.data[12:14] in (b"\x08\x06", b"\x86\xdd") and c.data in expected]
    assert {c.data for c in relevant} == expected
    assert len(relevant) == len(expected)
    assert {c.vlan for c in relevant} == {vlan}


@pytest.mark.parametrize("ifname", ["plain", "vlan"])
@pytest.mark.parametrize("mode", [ArpMode.REQUEST, ArpMode.REPLY])
def test_ipv4_frames_cover_every_address(netns_factory, link, mode, ifname) -> None:
    if ifname == "vlan":
        link = add_vlan(netns_factory, link)
    addresses = v4_block(3000)
    target = AnnounceTarget.from_addresses(link.ifname, addresses)
    result, captured = announce(netns_factory, link, target, arp_mode=mode)
    assert (result.frames_sent, result.error, dict(result.errors)) == (3000, None, {})
    mac = mac_of(netns_factory, link.ours, link.ifname)
    build = frames.arp_request if mode is ArpMode.REQUEST else frames.arp_reply
    expect_exact(captured, {build(mac, a.packed) for a in addresses}, 100 if ifname == "vlan" else None)


@pytest.mark.parametrize("router", [False, True])
def test_ipv6_adverts_cover_every_address(netns_factory, link, router) -> None:
    addresses = v6_block(3000)
    target = AnnounceTarget.from_addresses(link.ifname, addresses)
    result, captured = announce(netns_factory, link, target, na_router=router)
    assert (result.frames_sent, result.error) == (3000, None)
    mac = mac_of(netns_factory, link.ours, link.ifname)
    expect_exact(captured, {frames.neighbour_advert(mac, a.packed, router=router) for a in addresses}, None)


def test_vlan_subinterface_tags_both_families(netns_factory, vlan_link) -> None:
    v4, v6 = v4_block(500, "203.0.113.0"), v6_block(500)
    target = AnnounceTarget.from_addresses(vlan_link.ifname, [*v4, *v6])
    result, captured = announce(netns_factory, vlan_link, target)
    assert (result.frames_sent, result.error) == (1000, None)
    mac = mac_of(netns_factory, vlan_link.ours, vlan_link.ifname)
    expected = {frames.arp_request(mac, a.packed) for a in v4} | {frames.neighbour_advert(mac, a.packed) for a in v6}
    expect_exact(captured, expected, 100)


def test_pacing_caps_the_rate(netns_factory, link) -> None:
    target = AnnounceTarget.from_addresses(link.ifname, v4_block(4096))
    with netns_factory.enter(link.ours):
        sender = Sender(link.ifname)
    with sender:
        result = sender.send_round(target, pps=10_000)
    assert result.frames_sent == 4096
    assert 0.3 < result.duration < 1.5


def test_cancel_stops_a_long_round_early(netns_factory, link) -> None:
    target = AnnounceTarget.from_addresses(link.ifname, v4_block(100_000))
    cancel = CancelFlag()
    with netns_factory.enter(link.ours):
        sender = Sender(link.ifname)
    timer = threading.Timer(0.2, cancel.set)
    started = time.monotonic()
    timer.start()
    try:
        with sender:
            result = sender.send_round(target, pps=1000, cancel=cancel)
    finally:
        timer.cancel()
    assert result.cancelled
    assert 0 < result.frames_sent < 100_000
    assert time.monotonic() - started < 1.0


def test_cancel_set_before_the_round_sends_nothing(netns_factory, link) -> None:
    cancel = CancelFlag()
    cancel.set()
    with netns_factory.enter(link.ours):
        sender = Sender(link.ifname)
    with sender:
        result = sender.send_round(AnnounceTarget.from_addresses(link.ifname, v4_block(10)), cancel=cancel)
    assert (result.frames_sent, result.cancelled) == (0, True)


def test_missing_interface_is_reported(netns_factory, link) -> None:
    with netns_factory.enter(link.ours):
        sender = Sender("nosuch0")
    with sender:
        result = sender.send_round(AnnounceTarget.from_addresses("nosuch0", v4_block(4)))
    assert (result.frames_sent, result.error) == (0, "interface nosuch0 not found")


def test_down_interface_is_reported(netns_factory, link) -> None:
    netns_factory.ip("link", "set", link.ifname, "down", netns=link.ours)
    with netns_factory.enter(link.ours):
        sender = Sender(link.ifname)
    with sender:
        result = sender.send_round(AnnounceTarget.from_addresses(link.ifname, v4_block(4)))
    assert (result.frames_sent, result.error) == (0, f"interface {link.ifname} is down")


def neighbours(netns_factory, netns: str, ifname: str) -> dict[str, str]:
    entries = json.loads(netns_factory.ip("-j", "neigh", "show", "dev", ifname, netns=netns))
    return {e["dst"]: e.get("lladdr", "") for e in entries}


def test_neighbour_caches_move_to_our_mac(netns_factory, link) -> None:
    # arp_tbl and nd_tbl share gc_thresh3 (1024 by default) across namespaces: stay below it.
    v4, v6 = v4_block(900, "198.18.1.1"), v6_block(900)
    netns_factory.ip("addr", "add", "198.18.0.254/16", "dev", link.peer_ifname, netns=link.peer)
    netns_factory.ip("addr", "add", "2001:db8:1::fffe/64", "dev", link.peer_ifname, "nodad", netns=link.peer)
    batch = "".join(
        f"neigh replace {a} lladdr {OLD_MAC} dev {link.peer_ifname} nud {'stale' if i % 2 else 'reachable'}\n"
        for i, a in enumerate([*v4, *v6])
    )
    netns_factory.ip("-batch", "-", netns=link.peer, stdin=batch)
    before = neighbours(netns_factory, link.peer, link.peer_ifname)
    assert {before[str(a)] for a in [*v4, *v6]} == {OLD_MAC}
    # Neighbour locktime (1 s): an entry changed more recently may ignore updates.
    time.sleep(1.1)
    with netns_factory.enter(link.ours):
        sender = Sender(link.ifname)
    with sender:
        result = sender.send_round(AnnounceTarget.from_addresses(link.ifname, [*v4, *v6]))
    assert (result.frames_sent, result.error) == (1800, None)
    ours = ":".join(f"{b:02x}" for b in mac_of(netns_factory, link.ours, link.ifname))
    deadline = time.monotonic() + 3
    while True:
        after = neighbours(netns_factory, link.peer, link.peer_ifname)
        moved = {a for a in [*v4, *v6] if after.get(str(a)) == ours}
        if len(moved) == 1800 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(moved) == 1800, sorted(str(a) for a in {*v4, *v6} - moved)[:10]


def test_mac_change_between_rounds_is_followed(netns_factory, link) -> None:
    addresses = v4_block(64, "192.0.2.0")
    target = AnnounceTarget.from_addresses(link.ifname, addresses)
    with netns_factory.enter(link.ours):
        sender = Sender(link.ifname)
    with sender:
        sender.send_round(target)
        netns_factory.ip("link", "set", link.ifname, "address", "02:00:00:00:aa:01", netns=link.ours)
        result, captured = captured_round(netns_factory, link, sender, target)
    assert result.frames_sent == 64
    mac = bytes.fromhex("02000000aa01")
    expect_exact(captured, {frames.arp_request(mac, a.packed) for a in addresses}, None)


def test_sender_uses_the_tx_ring_unless_told_not_to(netns_factory, link) -> None:
    with netns_factory.enter(link.ours):
        ring, fallback = Sender(link.ifname), Sender(link.ifname, tx_ring=False)
    with ring, fallback:
        assert (ring.method, fallback.method) == ("tx-ring", "sendmmsg")


def test_sendmmsg_fallback_covers_both_families(netns_factory, link) -> None:
    v4, v6 = v4_block(2000), v6_block(1000)
    target = AnnounceTarget.from_addresses(link.ifname, [*v4, *v6])
    result, captured = announce(netns_factory, link, target, tx_ring=False)
    assert (result.frames_sent, result.error, dict(result.errors)) == (3000, None, {})
    mac = mac_of(netns_factory, link.ours, link.ifname)
    expected = {frames.arp_request(mac, a.packed) for a in v4} | {frames.neighbour_advert(mac, a.packed) for a in v6}
    expect_exact(captured, expected, None)


def test_ring_wraps_and_stays_in_step_across_rounds(netns_factory, link) -> None:
    # 5000 and 3001 frames: the second round starts mid-ring and wraps past the 4096 slots again.
    first, second = v4_block(5000, "198.18.0.1"), v6_block(3001)
    with netns_factory.enter(link.ours):
        sender = Sender(link.ifname)
    with sender:
        assert sender.send_round(AnnounceTarget.from_addresses(link.ifname, first)).frames_sent == 5000
        result, captured = captured_round(netns_factory, link, sender,
                                          AnnounceTarget.from_addresses(link.ifname, second))
    assert (result.frames_sent, result.error, dict(result.errors)) == (3001, None, {})
    mac = mac_of(netns_factory, link.ours, link.ifname)
    expect_exact(captured, {frames.neighbour_advert(mac, a.packed) for a in second}, None)


def cut_then_whole(netns_factory, link, tx_ring: bool, interrupt, recover=None, cancel=None):
    """Interrupt a long paced round after 0.1 s, recover, then check that the next
    round of 3,000 frames leaves whole and exact; returns the interrupted round."""
    long_round = AnnounceTarget.from_addresses(link.ifname, v4_block(50_000))
    addresses = v4_block(3000, "203.0.113.0")
    next_round = AnnounceTarget.from_addresses(link.ifname, addresses)
    with netns_factory.enter(link.ours):
        sender = Sender(link.ifname, tx_ring=tx_ring)
    timer = threading.Timer(0.1, interrupt)
    timer.start()
    try:
        with sender:
            cut = sender.send_round(long_round, pps=20_000, cancel=cancel)
            timer.join()
            if recover is not None:
                recover()
            result, captured = captured_round(netns_factory, link, sender, next_round)
    finally:
        timer.cancel()
    assert (result.frames_sent, result.error, dict(result.errors), result.cancelled) == (3000, None, {}, False)
    mac = mac_of(netns_factory, link.ours, link.ifname)
    expect_exact(captured, {frames.arp_request(mac, a.packed) for a in addresses}, None)
    return cut


@pytest.mark.parametrize("tx_ring", [True, False])
def test_a_cancelled_round_leaves_the_sender_ready_for_the_next(netns_factory, link, tx_ring) -> None:
    cancel = CancelFlag()
    cut = cut_then_whole(netns_factory, link, tx_ring, cancel.set, cancel=cancel)
    assert cut.cancelled and 0 < cut.frames_sent < 50_000


@pytest.mark.parametrize("tx_ring", [True, False])
def test_interface_down_mid_round_ends_it_and_the_next_round_is_whole(netns_factory, link, tx_ring) -> None:
    def set_link(state: str) -> None:
        netns_factory.ip("link", "set", link.ifname, state, netns=link.ours)

    cut = cut_then_whole(netns_factory, link, tx_ring, lambda: set_link("down"), lambda: set_link("up"))
    assert cut.error is not None and cut.error.startswith("ENETDOWN")
    assert 0 < cut.frames_sent < 50_000
