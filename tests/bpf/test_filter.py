"""The XDP cluster filter, frame by frame: a table of (what, frame in, verdict, frame out, counter).

One cluster-mac block hashing on source address and both ports into 16 buckets,
of which this node owns the even ones. Each frame's source is picked so that its
expected verdict holds only if the program hashed the fields it should: a
fragment passes only if it was hashed on its address alone, and so on.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from agent.config import Block
from agent.config.model import L2Config
from agent.core.buckets import HashFields, bucket
from xdp_run import OWN_MAC, XDP_DROP, XDP_PASS, FilterRun

CLUSTER_MAC = "01:00:5e:00:01:01"
PEER_MAC = "02:00:5e:10:00:99"
BUCKETS, SEED = 16, 0x5EED
BLOCK = Block(
    name="ext", interface="unused0",
    prefixes=(ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("198.51.100.0/24"),
              ipaddress.ip_network("2001:db8:5::/120"), ipaddress.ip_network("2001:db8:7::1000/116")),
    addresses=(ipaddress.ip_address("203.0.113.7"), ipaddress.ip_address("2001:db8:6::7")),
    l2=L2Config(mode="cluster-mac", cluster_mac=CLUSTER_MAC, buckets=BUCKETS,
                hash="sourceip-sourceport-destport", hash_seed=SEED, backend="xdp"))
VIP4, VIP6, LOOSE4 = "198.51.100.20", "2001:db8:5::20", "203.0.113.7"
SPORT, DPORT = 40000, 443


def owned(b: int) -> bool:
    return b % 2 == 0


def source(version: int, wanted: Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool]) -> str:
    """The first outside source address for which `wanted` holds."""
    net = ipaddress.ip_network("192.0.2.0/24" if version == 4 else "2001:db8:ff::/64")
    return str(next(a for a in (net.network_address + i for i in range(1, 4096)) if wanted(a)))


def with_ports(a) -> int:
    return bucket(HashFields.SOURCE_PORTS, a, SPORT, DPORT, BUCKETS, SEED)


def address_only(a) -> int:
    return bucket(HashFields.SOURCE, a, None, None, BUCKETS, SEED)


OWNED4 = source(4, lambda a: owned(with_ports(a)))
UNOWNED4 = source(4, lambda a: not owned(with_ports(a)))
OWNED6 = source(6, lambda a: owned(with_ports(a)))
UNOWNED6 = source(6, lambda a: not owned(with_ports(a)))
# Owned when hashed on the address alone, not owned with the ports (and the reverse):
# the verdict says which fields the program hashed.
ADDRESS_ONLY4 = source(4, lambda a: owned(address_only(a)) and not owned(with_ports(a)))
PORTS_ONLY4 = source(4, lambda a: not owned(address_only(a)) and owned(with_ports(a)))
ADDRESS_ONLY6 = source(6, lambda a: owned(address_only(a)) and not owned(with_ports(a)))
PORTS_ONLY6 = source(6, lambda a: not owned(address_only(a)) and owned(with_ports(a)))


def eth(dst: str = CLUSTER_MAC) -> Ether:
    return Ether(dst=dst, src=PEER_MAC)


def tcp4(src: str, dst: str = VIP4, **ip) -> bytes:
    return bytes(eth() / IP(src=src, dst=dst, **ip) / TCP(sport=SPORT, dport=DPORT))


def tcp6(src: str, *ext, dst: str = VIP6) -> bytes:
    packet = IPv6(src=src, dst=dst)
    for header in ext:
        packet = packet / header
    return bytes(eth() / packet / TCP(sport=SPORT, dport=DPORT))


def rewritten(frame: bytes) -> bytes:
    return bytes.fromhex(OWN_MAC.replace(":", "")) + frame[6:]


@dataclass(frozen=True)
class Case:
    what: str
    frame: bytes
    verdict: int
    counter: str
    # where the counter is kept: the block's slot, or the slot of frames of no block
    slot: str = "block"

    @property
    def out(self) -> bytes:
        """A passed frame of an owned bucket leaves addressed to this host; all else untouched."""
        return rewritten(self.frame) if self.counter == "passed" else self.frame


def ipv4_header_cut(length: int) -> Case:
    return Case(f"IPv4 cut to {length} bytes, in the IP header", tcp4(OWNED4)[:length], XDP_PASS, "malformed", "none")


def ports_cut(frame: bytes, length: int, what: str) -> Case:
    return Case(f"{what} cut to {length} bytes, in the TCP ports", frame[:length], XDP_DROP, "malformed")


CASES = [
    Case("IPv4 TCP, owned bucket", tcp4(OWNED4), XDP_PASS, "passed"),
    Case("IPv4 TCP, bucket of another node", tcp4(UNOWNED4), XDP_DROP, "dropped"),
    Case("IPv4 TCP hashed with its ports", tcp4(PORTS_ONLY4), XDP_PASS, "passed"),
    Case("IPv4 TCP to a single address of the block", tcp4(OWNED4, LOOSE4), XDP_PASS, "passed"),
    Case("IPv4 with options: ports found after them", bytes(
        eth() / IP(src=OWNED4, dst=VIP4, options=b"\x01\x01\x01\x00") / TCP(sport=SPORT, dport=DPORT)),
        XDP_PASS, "passed"),
    Case("IPv4 to no block address", tcp4(OWNED4, "192.0.2.200"), XDP_PASS, "not_block", "none"),
    Case("IPv4 to no block address, in a /16 shared with one", tcp4(OWNED4, "198.51.7.7"), XDP_PASS, "not_block",
         "none"),
    Case("IPv4 to a /15 of the block (the /16 index alone), owned", tcp4(OWNED4, "198.19.250.1"), XDP_PASS,
         "passed"),
    Case("IPv4 to a /15 of the block, not owned", tcp4(UNOWNED4, "198.18.0.9"), XDP_DROP, "dropped"),
    Case("IPv4 next to the /15", tcp4(OWNED4, "198.20.0.1"), XDP_PASS, "not_block", "none"),
    Case("IPv4 to the block, but to this host's own MAC: no lookup", bytes(
        eth(OWN_MAC) / IP(src=UNOWNED4, dst=VIP4) / TCP(sport=SPORT, dport=DPORT)), XDP_PASS, "not_cluster_mac",
         "none"),
    Case("IPv4 to the block, but to another multicast MAC", bytes(
        eth("01:00:5e:00:01:09") / IP(src=UNOWNED4, dst=VIP4) / TCP(sport=SPORT, dport=DPORT)), XDP_PASS,
         "not_cluster_mac"),
    Case("ARP to the cluster MAC", bytes(eth() / ARP(psrc=OWNED4, pdst=VIP4)), XDP_PASS, "not_block", "none"),
    Case("one 802.1Q tag, owned", bytes(eth() / Dot1Q(vlan=7) / IP(src=OWNED4, dst=VIP4) / TCP(
        sport=SPORT, dport=DPORT)), XDP_PASS, "passed"),
    Case("one 802.1Q tag, not owned", bytes(eth() / Dot1Q(vlan=7) / IP(src=UNOWNED4, dst=VIP4) / TCP(
        sport=SPORT, dport=DPORT)), XDP_DROP, "dropped"),
    Case("802.1ad and 802.1Q tags, owned", bytes(eth() / Dot1AD(vlan=100) / Dot1Q(vlan=7) / IP(
        src=OWNED4, dst=VIP4) / TCP(sport=SPORT, dport=DPORT)), XDP_PASS, "passed"),
    Case("802.1ad and 802.1Q tags, not owned", bytes(eth() / Dot1AD(vlan=100) / Dot1Q(vlan=7) / IP(
        src=UNOWNED4, dst=VIP4) / TCP(sport=SPORT, dport=DPORT)), XDP_DROP, "dropped"),
    Case("three tags: past what is parsed, passed untouched", bytes(
        eth() / Dot1AD(vlan=100) / Dot1Q(vlan=7) / Dot1Q(vlan=8) / IP(src=UNOWNED4, dst=VIP4) / TCP(
            sport=SPORT, dport=DPORT)), XDP_PASS, "not_block", "none"),
    Case("IPv4 UDP first fragment: hashed on the address", bytes(
        eth() / IP(src=ADDRESS_ONLY4, dst=VIP4, flags="MF") / UDP(sport=SPORT, dport=DPORT)), XDP_PASS, "passed"),
    Case("IPv4 later fragment: hashed on the address", bytes(
        eth() / IP(src=ADDRESS_ONLY4, dst=VIP4, frag=185, proto=17) / (b"\xb0" * 32)), XDP_PASS, "passed"),
    Case("IPv4 DF is no fragment: hashed with the ports", bytes(
        eth() / IP(src=ADDRESS_ONLY4, dst=VIP4, flags="DF") / UDP(sport=SPORT, dport=DPORT)), XDP_DROP, "dropped"),
    Case("ICMP echo: hashed on the address", bytes(eth() / IP(src=ADDRESS_ONLY4, dst=VIP4) / ICMP()),
         XDP_PASS, "passed"),
    Case("IPv6 TCP, owned", tcp6(OWNED6), XDP_PASS, "passed"),
    Case("IPv6 TCP, not owned", tcp6(UNOWNED6), XDP_DROP, "dropped"),
    Case("IPv6 TCP hashed with its ports", tcp6(PORTS_ONLY6), XDP_PASS, "passed"),
    Case("IPv6 TCP behind hop-by-hop and destination options", tcp6(
        PORTS_ONLY6, IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt()), XDP_PASS, "passed"),
    Case("IPv6 first fragment: hashed on the address", tcp6(ADDRESS_ONLY6, IPv6ExtHdrFragment(m=1)),
         XDP_PASS, "passed"),
    Case("IPv6 atomic fragment: hashed on the address", tcp6(ADDRESS_ONLY6, IPv6ExtHdrFragment()),
         XDP_PASS, "passed"),
    Case("ICMPv6 echo: hashed on the address", bytes(eth() / IPv6(src=ADDRESS_ONLY6, dst=VIP6) /
                                                     ICMPv6EchoRequest()), XDP_PASS, "passed"),
    Case("IPv6 to no block address", bytes(eth() / IPv6(src=OWNED6, dst="2001:db8:8::1") / TCP()),
         XDP_PASS, "not_block", "none"),
    Case("IPv6 to a /116 of the block (the /116 index alone), owned", tcp6(OWNED6, dst="2001:db8:7::1abc"),
         XDP_PASS, "passed"),
    Case("IPv6 to a /116 of the block, not owned", tcp6(UNOWNED6, dst="2001:db8:7::1001"), XDP_DROP, "dropped"),
    Case("IPv6 next to the /116", tcp6(OWNED6, dst="2001:db8:7::2001"), XDP_PASS, "not_block", "none"),
    Case("IPv6 single address of the block", tcp6(OWNED6, dst="2001:db8:6::7"), XDP_PASS, "passed"),
    Case("IPv6 beside a single address, in its /116", tcp6(OWNED6, dst="2001:db8:6::8"), XDP_PASS, "not_block",
         "none"),
    # (A frame shorter than an Ethernet header: BPF_PROG_TEST_RUN refuses it, EINVAL.)
    Case("802.1Q tag cut short", bytes(eth() / Dot1Q(vlan=7) / IP(src=OWNED4, dst=VIP4))[:17],
         XDP_PASS, "malformed", "none"),
    Case("IPv4 header length under 20 bytes", tcp4(OWNED4, ihl=4), XDP_PASS, "malformed", "none"),
    Case("IPv6 extension header cut short", tcp6(OWNED6, IPv6ExtHdrHopByHop())[:14 + 40 + 1],
         XDP_DROP, "malformed"),
    *(ipv4_header_cut(n) for n in range(14, 14 + 20)),
    *(ports_cut(tcp4(OWNED4), n, "IPv4 TCP") for n in range(14 + 20, 14 + 20 + 4)),
    *(ports_cut(tcp6(OWNED6), n, "IPv6 TCP") for n in range(14 + 40, 14 + 40 + 4)),
    *(Case(f"IPv6 cut to {n} bytes, in the IPv6 header", tcp6(OWNED6)[:n], XDP_PASS, "malformed", "none")
      for n in range(14, 14 + 40)),
]


@pytest.fixture(scope="module")
def filt():
    run = FilterRun(BLOCK)
    run.own(b for b in range(BUCKETS) if owned(b))
    yield run
    run.close()


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_verdict_frame_and_counter(filt: FilterRun, case: Case) -> None:
    before = filt.counters()
    result = filt.run(case.frame)
    after = filt.counters()
    assert result.verdict == case.verdict
    assert result.packet == case.out
    changed = {(slot, name): after[slot][name] - before[slot][name]
               for slot in after for name in after[slot] if after[slot][name] != before[slot][name]}
    assert changed == {(case.slot, case.counter): 1}


def test_an_expired_lease_drops_owned_buckets(filt: FilterRun) -> None:
    """The agent stopped refreshing: the program stops serving by itself."""
    frame = tcp4(OWNED4)
    try:
        filt.own((b for b in range(BUCKETS) if owned(b)), expires_ns=time.clock_gettime_ns(time.CLOCK_MONOTONIC) - 1)
        before = filt.counters()["block"]["expired"]
        result = filt.run(frame)
        assert (result.verdict, result.packet) == (XDP_DROP, frame)
        assert filt.counters()["block"]["expired"] == before + 1
    finally:
        filt.own(b for b in range(BUCKETS) if owned(b))
    assert filt.run(frame).verdict == XDP_PASS


def test_nothing_owned_drops_everything_of_the_block(filt: FilterRun) -> None:
    try:
        filt.own(())
        assert {filt.run(tcp4(s)).verdict for s in (OWNED4, UNOWNED4)} == {XDP_DROP}
        assert filt.run(tcp4(OWNED4, "192.0.2.200")).verdict == XDP_PASS
    finally:
        filt.own(b for b in range(BUCKETS) if owned(b))
