"""agent.core.buckets against the kernel's own nft `jhash` and the XDP filter, flow by flow.

The receiver's netdev ingress chain sets the mark to `jhash <fields> mod B seed S
offset O` for every TCP packet that arrives and adds (source, ports, mark) to a
dynamic set, once per case below; the test sends 10,000 random flows per
address family as raw frames from the other end of a veth, reads the sets back
and requires every mark to equal buckets.bucket() for its flow. Frames at
ingress need no addresses, routes or rp_filter: the chain drops them after it
has hashed them. The same frames, sent to a cluster MAC, then go through the
XDP program (BPF_PROG_TEST_RUN) for each case it can serve (at most 1,024
buckets, no offset), whose bucket must be the kernel's mark too.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import random
import re
import socket
import struct
import time
from dataclasses import dataclass

import pytest

from agent.config import Block
from agent.config.model import L2Config
from agent.config.schema import MAX_BUCKETS
from agent.core.buckets import HashFields, bucket, hash_key
from agent.core.clusterset import hash_expression
from agent.netns import run_in
from xdp_run import FilterRun

FLOWS = 10_000
CLUSTER_MAC = "01:00:5e:00:01:01"
TABLE = "dpt_parity"
# (fields, modulus, seed, offset): CLUSTERIP's three modes in 256 buckets; the
# same with the widest modulus, where the mark is the whole hash less one (so a
# wrong bit anywhere shows); and one modulus that is no power of two, with an
# offset, where only the multiply-shift puts every flow in the right bucket.
FULL = 0xFFFFFFFF
CASES = (
    (HashFields.SOURCE, 256, 0x5EED0001, 0),
    (HashFields.SOURCE_PORT, 256, 0x5EED0002, 0),
    (HashFields.SOURCE_PORTS, 256, 0x5EED0003, 0),
    (HashFields.SOURCE, FULL, 0xDEADBEEF, 0),
    (HashFields.SOURCE_PORT, FULL, 0x00000001, 0),
    (HashFields.SOURCE_PORTS, FULL, 0x80000000, 0),
    (HashFields.SOURCE_PORTS, 1000, 0, 7),
)


@dataclass(frozen=True)
class Family:
    nft: str  # nft's protocol keyword, "ip" or "ip6"
    sources: ipaddress.IPv4Network | ipaddress.IPv6Network
    ethertype: int
    destination: str


FAMILIES = {
    "ipv4": Family("ip", ipaddress.ip_network("198.18.0.0/15"), 0x0800, "203.0.113.1"),
    "ipv6": Family("ip6", ipaddress.ip_network("2001:db8::/32"), 0x86DD, "2001:db8:ffff::1"),
}

Flow = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int, int]


def ruleset(family: Family, device: str) -> str:
    key = f"{family.nft} saddr . tcp sport . tcp dport . meta mark"
    sets = [f"set s{i} {{ typeof {key}; flags dynamic; size 65536; }}" for i in range(len(CASES))]
    rules = [f"meta protocol {family.nft} meta l4proto tcp counter name arrived"]
    for i, (fields, modulus, seed, offset) in enumerate(CASES):
        # The very expression of the agent's cluster filter, with an offset added.
        expr = hash_expression(fields, family.nft, modulus, seed)
        rules.append(f"meta protocol {family.nft} meta l4proto tcp"
                     f" meta mark set {expr} offset {offset}"
                     f" update @s{i} {{ {key} }}")
    return "\n".join([
        f"table netdev {TABLE} {{", "counter arrived { }", *sets,
        f'chain ingress {{ type filter hook ingress device "{device}" priority 0; policy drop;',
        *rules, "}", "}", ""])


def random_flows(family: Family, rng: random.Random) -> list[Flow]:
    net = family.sources
    flows: set[Flow] = set()
    while len(flows) < FLOWS:
        src = net.network_address + rng.randrange(net.num_addresses)
        flows.add((src, rng.randrange(65536), rng.randrange(65536)))
    return sorted(flows)


def frame(dst_mac: bytes, src_mac: bytes, family: Family, flow: Flow) -> bytes:
    """An Ethernet frame with a bare TCP SYN; nothing before the ingress hook checks checksums."""
    src, sport, dport = flow
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, 0x02, 1024, 0, 0)
    dst = ipaddress.ip_address(family.destination).packed
    if family.nft == "ip":
        l3 = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(tcp), 0, 0, 64, socket.IPPROTO_TCP, 0) + src.packed + dst
    else:
        l3 = struct.pack("!IHBB", 6 << 28, len(tcp), socket.IPPROTO_TCP, 64) + src.packed + dst
    return dst_mac + src_mac + struct.pack("!H", family.ethertype) + l3 + tcp


def send(sock: socket.socket, data: bytes) -> bool:
    """Send one frame; False where the receiving veth's backlog was full and dropped it."""
    try:
        sock.send(data)
    except OSError as err:
        if err.errno != errno.ENOBUFS:
            raise
        return False
    return True


def nft_json(netns: str, *args: str) -> list[dict]:
    return json.loads(run_in(netns, ["nft", "-j", "list", *args]).stdout)["nftables"]


def arrived(netns: str) -> int:
    return next(o["counter"]["packets"] for o in nft_json(netns, "counter", "netdev", TABLE, "arrived")
                if "counter" in o)


def recorded(netns: str) -> dict[str, dict[Flow, int]]:
    """Every set of the table, by name, as flow -> mark (one listing: each nft run reads it all)."""
    sets = (o["set"] for o in nft_json(netns, "table", "netdev", TABLE) if "set" in o)
    out: dict[str, dict[Flow, int]] = {}
    for listed in sets:
        marks = out.setdefault(listed["name"], {})
        for element in listed.get("elem", []):
            src, sport, dport, mark = element["concat"]
            marks[(ipaddress.ip_address(src), sport, dport)] = mark
    return out


def mac_of(netns_factory, netns: str, ifname: str) -> bytes:
    link = json.loads(netns_factory.ip("-j", "link", "show", ifname, netns=netns))[0]
    return bytes.fromhex(link["address"].replace(":", ""))


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_every_flow_lands_in_the_kernels_bucket(netns_factory, family_name: str) -> None:
    family = FAMILIES[family_name]
    sender, receiver = netns_factory("dpt-bksend"), netns_factory("dpt-bkrecv")
    netns_factory.ip("link", "add", "bk0", "type", "veth", "peer", "name", "bk1", "netns", receiver, netns=sender)
    netns_factory.ip("link", "set", "bk0", "up", netns=sender)
    netns_factory.ip("link", "set", "bk1", "up", netns=receiver)
    loaded = run_in(receiver, ["nft", "--debug=netlink", "-f", "-"], input=ruleset(family, "bk1")).stdout
    # nft hashes exactly as many register bytes as hash_key() gives, case by case.
    example = family.sources.network_address
    assert [int(n) for n in re.findall(r"jhash\(reg \d+, (\d+),", loaded)] == [
        len(hash_key(fields, example, 0, 0)) for fields, *_ in CASES]

    flows = random_flows(family, random.Random(f"bucket-parity-{family_name}"))
    dst_mac, src_mac = mac_of(netns_factory, receiver, "bk1"), mac_of(netns_factory, sender, "bk0")
    with netns_factory.enter(sender):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with sock:
        sock.bind(("bk0", 0))
        delivered = sum(send(sock, frame(dst_mac, src_mac, family, flow)) for flow in flows)

    deadline = time.monotonic() + 15
    while (count := arrived(receiver)) < delivered and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count >= FLOWS * 0.95, f"only {count} of {FLOWS} frames reached the ingress hook"

    sent, sets = set(flows), recorded(receiver)
    for index, (fields, modulus, seed, offset) in enumerate(CASES):
        marks = sets[f"s{index}"]
        case = f"{family_name} {fields.value} mod {modulus} seed {seed:#x} offset {offset}"
        assert len(marks) >= FLOWS * 0.95, f"{case}: only {len(marks)} flows recorded"
        assert marks.keys() <= sent, f"{case}: flows recorded that were never sent"
        ours = {flow: bucket(fields, *flow, modulus, seed, offset) for flow in marks}
        wrong = {flow: (mark, ours[flow]) for flow, mark in marks.items() if mark != ours[flow]}
        assert not wrong, f"{case}: {len(wrong)} of {len(marks)} differ, (kernel, ours): {list(wrong.items())[:5]}"
        if modulus <= MAX_BUCKETS and offset == 0:
            flows_seen = sorted(marks)
            xdp = xdp_buckets(family, fields, modulus, seed, src_mac, flows_seen)
            wrong = {f: (marks[f], b) for f, b in zip(flows_seen, xdp) if marks[f] != b}
            assert not wrong, f"{case}: XDP differs for {len(wrong)} flows, (kernel, XDP): {list(wrong.items())[:5]}"


def xdp_buckets(family: Family, fields: HashFields, buckets: int, seed: int, src_mac: bytes,
                flows: list[Flow]) -> list[int]:
    """The bucket the XDP filter puts each flow's frame in, for a block holding the destination."""
    block = Block(name="parity", interface="unused0", prefixes=(ipaddress.ip_network(family.destination),),
                  addresses=(), l2=L2Config(mode="cluster-mac", cluster_mac=CLUSTER_MAC, buckets=buckets,
                                            hash=fields.value, hash_seed=seed, backend="xdp"))
    run = FilterRun(block)
    try:
        cluster_mac = bytes.fromhex(CLUSTER_MAC.replace(":", ""))
        return run.buckets_of([frame(cluster_mac, src_mac, family, flow) for flow in flows])
    finally:
        run.close()
