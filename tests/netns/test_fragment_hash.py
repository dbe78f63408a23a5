"""The cluster filter's own rules on the real kernel: fragments, ICMP and ports.

The receiver loads clusterset.add_block()'s text for a block on one end of a
veth and owns a set of its buckets through clusterset.ownership_batch(), as
agent.dataplane.cluster does. The sender writes raw frames to the block's
cluster MAC from the other end: TCP, UDP, a UDP first fragment, a UDP later
fragment and an ICMP echo, over IPv4 and IPv6 (a Fragment header), every frame
from a source address of its own. A second table watches the same device: a
chain before the filter counts what arrived, one after it records the source
and pkttype of what the filter let through. Every frame must come through
exactly when buckets.bucket(flow_fields(...)) puts it in an owned bucket, and
leave as PACKET_HOST.

The flows are chosen so that, for every kind of packet, both outcomes occur,
and each frame's fate differs from what hashing on the other fields (ports
where flow_fields() says source alone, or the reverse) would give: a filter
that hashed any kind the wrong way fails here.
"""

from __future__ import annotations

import ipaddress
import json
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from agent.core import clusterset
from agent.core.buckets import HashFields, bucket, flow_fields
from agent.core.frames import checksum
from agent.dataplane.nft import LeaseSocket
from agent.netns import run_in
from waiting import wait_for

BLOCK = "frag"
MAC = "01:00:5e:00:01:01"
BUCKETS = 16
SEED = 0x5EED
OWNED = [0, 3, 4, 6, 9, 13, 14, 15]
WATCH = "dpt_fragwatch"
EACH = 2  # frames per kind, family and outcome
ICMP_ECHO = {"ip": 8, "ip6": 128}


@dataclass(frozen=True)
class Family:
    nft: str  # "ip" or "ip6"
    sources: ipaddress.IPv4Network | ipaddress.IPv6Network
    ethertype: int
    destination: ipaddress.IPv4Address | ipaddress.IPv6Address


FAMILIES = (
    Family("ip", ipaddress.ip_network("198.18.0.0/15"), 0x0800, ipaddress.ip_address("203.0.113.1")),
    Family("ip6", ipaddress.ip_network("2001:db8::/32"), 0x86DD, ipaddress.ip_address("2001:db8:ffff::1")),
)


@dataclass(frozen=True)
class Packet:
    """One frame's IP packet and what the hash sees of it."""

    protocol: int  # the upper-layer protocol
    fragment: bool
    ports: tuple[int, int]  # the bytes at transport offsets 0..3 (for a later fragment, its datagram's ports)
    l3: Callable[[Family, ipaddress.IPv4Address | ipaddress.IPv6Address], bytes]


def ip_packet(family: Family, src, protocol: int, payload: bytes, offset: int = 0, more: bool = False,
              ident: int = 0x1234) -> bytes:
    """An IPv4 packet (DF when no fragment) or an IPv6 one, a Fragment header first when
    it is a fragment; `offset` in 8-byte units."""
    dst = family.destination.packed
    fragment = offset or more
    if family.nft == "ip":
        flags = ((0x2000 if more else 0) | offset) if fragment else 0x4000  # DF on whole packets
        header = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(payload), ident, flags, 64, protocol, 0) + src.packed + dst
        header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
        return header + payload
    if fragment:
        payload = struct.pack("!BBHI", protocol, 0, offset << 3 | more, ident) + payload
        protocol = 44
    return struct.pack("!IHBB", 6 << 28, len(payload), protocol, 64) + src.packed + dst + payload


def icmp(family: Family, src, ident: int, seq: int) -> tuple[bytes, int]:
    """An echo request and its checksum (ICMPv6's covers the pseudo-header)."""
    message = struct.pack("!BBHHH", ICMP_ECHO[family.nft], 0, 0, ident, seq) + b"dpagent!"
    covered = message
    if family.nft == "ip6":
        covered = src.packed + family.destination.packed + struct.pack("!II", len(message), 58) + message
    value = checksum(covered)
    return message[:2] + struct.pack("!H", value) + message[4:], value


def packet(kind: str, family: Family, src, rng: random.Random) -> Packet:
    sport, dport = rng.randrange(1, 65536), rng.randrange(1, 65536)
    data = rng.randbytes(24)
    # A UDP datagram of 8 + 24 bytes: whole, or as 8 + 16 and then the last 8 bytes.
    udp = struct.pack("!HHHH", sport, dport, 8 + len(data), 0)
    if kind == "tcp":
        tcp = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, 0x02, 1024, 0, 0)
        return Packet(6, False, (sport, dport), lambda f, s: ip_packet(f, s, 6, tcp))
    if kind == "udp":
        return Packet(17, False, (sport, dport), lambda f, s: ip_packet(f, s, 17, udp + data))
    if kind == "udp first fragment":
        return Packet(17, True, (sport, dport), lambda f, s: ip_packet(f, s, 17, udp + data[:16], more=True))
    if kind == "udp later fragment":
        return Packet(17, True, (sport, dport), lambda f, s: ip_packet(f, s, 17, data[16:], offset=3))
    assert kind == "icmp echo"
    protocol = 1 if family.nft == "ip" else 58
    message, value = icmp(family, src, sport, dport)
    return Packet(protocol, False, (ICMP_ECHO[family.nft] << 8, value),
                  lambda f, s: ip_packet(f, s, protocol, message))


KINDS = ("tcp", "udp", "udp first fragment", "udp later fragment", "icmp echo")


def owned(fields: HashFields, src, ports: tuple[int, int]) -> bool:
    return bucket(fields, src, *ports, BUCKETS, SEED) in OWNED


def choose(fields: HashFields, family: Family, rng: random.Random) -> list[tuple[str, object, bytes, bool]]:
    """(kind, source, IP packet, expected through) for EACH frames per kind and outcome, each
    from a source of its own, each one whose outcome hashing on the other fields would flip."""
    chosen, used = [], set()
    for kind in KINDS:
        wanted = {True: EACH, False: EACH}
        while any(wanted.values()):
            src = family.sources.network_address + rng.randrange(family.sources.num_addresses)
            if src in used:
                continue
            pkt = packet(kind, family, src, rng)
            hashed = flow_fields(fields, pkt.protocol, pkt.fragment)
            other = HashFields.SOURCE if hashed is not HashFields.SOURCE else (
                fields if fields is not HashFields.SOURCE else HashFields.SOURCE_PORTS)
            through = owned(hashed, src, pkt.ports)
            if wanted[through] and owned(other, src, pkt.ports) != through:
                wanted[through] -= 1
                used.add(src)
                chosen.append((kind, src, pkt.l3(family, src), through))
    return chosen


def watch(device: str) -> str:
    """Before the filter (-500) count what arrives for the MAC; after it record what came through."""
    return "\n".join([
        f"table netdev {WATCH} {{", "counter arrived { }",
        "set through4 { typeof ip saddr . meta pkttype; flags dynamic; size 1024; }",
        "set through6 { typeof ip6 saddr . meta pkttype; flags dynamic; size 1024; }",
        f'chain before {{ type filter hook ingress device "{device}" priority -600; policy accept;',
        f"ether daddr {MAC} counter name arrived", "}",
        f'chain after {{ type filter hook ingress device "{device}" priority 0; policy accept;',
        f"ether daddr {MAC} meta protocol ip update @through4 {{ ip saddr . meta pkttype }}",
        f"ether daddr {MAC} meta protocol ip6 update @through6 {{ ip6 saddr . meta pkttype }}", "}",
        "}", ""])


def nft_json(netns: str, *args: str) -> list[dict]:
    return json.loads(run_in(netns, ["nft", "-j", "list", *args]).stdout)["nftables"]


def arrived(netns: str) -> int:
    return next(o["counter"]["packets"] for o in nft_json(netns, "counter", "netdev", WATCH, "arrived")
                if "counter" in o)


def through(netns: str) -> dict[object, str]:
    """Source address -> pkttype of every frame the filter let through."""
    found = {}
    for listed in (o["set"] for o in nft_json(netns, "table", "netdev", WATCH) if "set" in o):
        for element in listed.get("elem", []):
            src, pkttype = element["concat"]
            found[ipaddress.ip_address(src)] = pkttype
    return found


def mac_of(netns_factory, netns: str, ifname: str) -> bytes:
    link = json.loads(netns_factory.ip("-j", "link", "show", ifname, netns=netns))[0]
    return bytes.fromhex(link["address"].replace(":", ""))


@pytest.mark.parametrize("fields", list(HashFields), ids=lambda f: f.value)
def test_each_packet_comes_through_exactly_when_its_flow_fields_bucket_is_owned(netns_factory,
                                                                                fields: HashFields) -> None:
    sender, receiver = netns_factory("dpt-frsend"), netns_factory("dpt-frrecv")
    netns_factory.ip("link", "add", "fr0", "type", "veth", "peer", "name", "fr1", "netns", receiver, netns=sender)
    netns_factory.ip("link", "set", "fr0", "up", netns=sender)
    netns_factory.ip("link", "set", "fr1", "up", netns=receiver)
    run_in(receiver, ["nft", "-f", "-"], input=clusterset.add_block(BLOCK, "fr1", MAC, fields, BUCKETS, SEED))
    run_in(receiver, ["nft", "-f", "-"], input=watch("fr1"))
    with netns_factory.enter(receiver):
        netlink = LeaseSocket()
    try:
        assert netlink.transact(lambda seq: clusterset.ownership_batch(BLOCK, OWNED, seq)) is None
    finally:
        netlink.close()

    rng = random.Random(f"fragment-hash-{fields.value}")
    cases = [(family, *case) for family in FAMILIES for case in choose(fields, family, rng)]
    dst_mac, src_mac = bytes.fromhex(MAC.replace(":", "")), mac_of(netns_factory, sender, "fr0")
    with netns_factory.enter(sender):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with sock:
        sock.bind(("fr0", 0))
        for family, _kind, _src, l3, _through in cases:
            sock.send(dst_mac + src_mac + struct.pack("!H", family.ethertype) + l3)

    # The last frame counted before the filter has been through both chains long before
    # the next nft process lists the sets.
    wait_for(lambda: arrived(receiver) >= len(cases), timeout=10, what=f"{len(cases)} frames at ingress")
    assert arrived(receiver) == len(cases)
    seen = through(receiver)
    assert set(seen.values()) <= {"host"}, f"let through without becoming PACKET_HOST: {seen}"
    wrong = [f"{family.nft} {kind} from {src}: {'dropped' if expected else 'let through'}, bucket predicted "
             f"{'owned' if expected else 'not owned'}" for family, kind, src, _l3, expected in cases
             if (src in seen) != expected]
    assert not wrong, "\n".join(wrong)
    kinds = {(family.nft, kind, expected) for family, kind, _src, _l3, expected in cases}
    assert len(kinds) == len(FAMILIES) * len(KINDS) * 2
