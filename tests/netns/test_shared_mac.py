"""Shared MACs: a vmac and a cluster MAC, neighbours' entries that never change, failover without GARPs.

The client's neighbour entries for block addresses are read before and after the
master dies; every ARP / NDP answer is looked at on the wire (scapy); the client's
kernel counts every ARP packet and neighbour advertisement it receives, so "no
per-address announcement" is a count, not a hope. In cluster-mac mode a TCP
connection to a block address shows that frames to the multicast MAC are made
PACKET_HOST, and taking that rule out shows that TCP needs it.
"""

from __future__ import annotations

import json
import signal
import sys

import pytest

from agent.lab import CLUSTER_MAC, VRID, Lab
from waiting import wait_for

V4 = ["198.18.0.1", "198.18.77.7", "198.18.255.254"]
# A /120 keeps the IPv6 takeover short (each address is configured on its own).
BLOCK_V6 = "2001:db8:1::/120"
V6 = ["2001:db8:1::1", "2001:db8:1::77", "2001:db8:1::fe"]
VMAC = {4: f"00:00:5e:00:01:{VRID:02x}", 6: f"00:00:5e:00:02:{VRID:02x}"}
CMAC = {4: CLUSTER_MAC, 6: CLUSTER_MAC[:-1] + "2"}
PORT = 8080

# Every answer to a broadcast ARP request / a multicast NS for ADDR from the client:
# (Ethernet source, link-layer address the answer gives), as JSON.
WHO_ANSWERS = """
import json, socket, sys
from scapy.all import ARP, Ether, IPv6, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, ICMPv6NDOptDstLLAddr
from scapy.all import conf, get_if_hwaddr, in6_getnsma, in6_getnsmac, inet_pton, inet_ntop, srp
conf.verb = 0
mac, target = get_if_hwaddr("ext0"), sys.argv[1]
if ":" in target:
    group = inet_ntop(socket.AF_INET6, in6_getnsma(inet_pton(socket.AF_INET6, target)))
    ask = (Ether(src=mac, dst=in6_getnsmac(inet_pton(socket.AF_INET6, group))) / IPv6(src="2001:db8:e::10", dst=group)
           / ICMPv6ND_NS(tgt=target) / ICMPv6NDOptSrcLLAddr(lladdr=mac))
else:
    ask = Ether(dst="ff:ff:ff:ff:ff:ff", src=mac) / ARP(op=1, hwsrc=mac, psrc="203.0.113.10", pdst=target)
answered, _ = srp(ask, iface="ext0", timeout=1.0, multi=True, retry=0)
found = set()
for _, reply in answered:
    if ARP in reply:
        found.add((reply.src, reply[ARP].hwsrc))
    elif ICMPv6NDOptDstLLAddr in reply:
        found.add((reply.src, reply[ICMPv6NDOptDstLLAddr].lladdr))
print(json.dumps(sorted(found)))
"""

# The client's kernel counts what reaches it: ARP packets, and neighbour advertisements.
COUNTERS = """
table arp dpt_seen {
  counter arps { }
  chain input {
    type filter hook input priority 0;
    counter name arps
  }
}
table ip6 dpt_seen {
  counter na { }
  chain input {
    type filter hook input priority 0;
    icmpv6 type nd-neighbor-advert counter name na
  }
}
"""

def who_answers(lab: Lab, address: str, asks: int = 3) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for _ in range(asks):
        found.update(map(tuple, json.loads(lab.exec("client", [sys.executable, "-c", WHO_ANSWERS, address]).stdout)))
    return found


def entries(lab: Lab, addresses: list[str]) -> dict[str, str | None]:
    listed = json.loads(lab.exec("client", ["ip", "-j", "neigh", "show", "dev", "ext0"]).stdout or "[]")
    macs = {e["dst"]: e.get("lladdr") for e in listed}
    return {a: macs.get(a) for a in addresses}


def seen(lab: Lab) -> dict[str, int]:
    out = {}
    for family, name in (("arp", "arps"), ("ip6", "na")):
        listing = json.loads(lab.exec("client", ["nft", "-j", "list", "counter", family, "dpt_seen", name]).stdout)
        out[name] = next(i["counter"]["packets"] for i in listing["nftables"] if "counter" in i)
    return out


def start_pair(lab: Lab, l2: str) -> None:
    for node in (1, 2):
        lab.start_agent(node, lab.write_config(node, block_v6=BLOCK_V6, l2=l2))
        if node == 1:
            lab.wait_state(1, "MASTER")
    lab.wait_master_seen(2, 1)
    counters = lab.dir / "counters.nft"
    counters.write_text(COUNTERS)
    lab.exec("client", ["nft", "-f", str(counters)])



def connect(lab: Lab, address: str, timeout: float = 2.0) -> str | None:
    """Whom a TCP connection from the client to address:PORT reaches, or None."""
    code = (f"import socket\ntry:\n s = socket.create_connection(({address!r}, {PORT}), timeout={timeout})\n"
            f" print(s.recv(16).decode())\nexcept OSError:\n print('')")
    return lab.exec("client", [sys.executable, "-c", code]).stdout.strip() or None


def start_servers(lab: Lab) -> None:
    for node in (1, 2):
        lab.serve(node, PORT)


@pytest.mark.lab(heartbeat="switched")
@pytest.mark.parametrize("version", [4, 6])
def test_vmac_neighbours_keep_the_vmac_and_failover_sends_no_per_address_announcement(lab, version: int) -> None:
    addresses = V4 if version == 4 else V6
    start_pair(lab, "vmac")
    fw1, fw2 = lab.mac("fw1", "ext0"), lab.mac("fw2", "ext0")
    assert fw1 != fw2
    lab.resolve(addresses)
    assert entries(lab, addresses) == {a: VMAC[version] for a in addresses}
    # Every answer names the vmac; the nodes' own MACs never answer for a block address.
    answers = wait_for(lambda: who_answers(lab, addresses[1]))
    assert {given for _, given in answers} == {VMAC[version]}, answers
    assert fw2 not in {source for source, _ in answers}
    start_servers(lab)
    assert wait_for(lambda: connect(lab, addresses[1])) == "fw1"
    before = seen(lab)

    lab.kill_node(1)
    lab.wait_state(2, "MASTER", timeout=10)
    # Traffic resumes from the new master, at every address, to the same MAC.
    for address in addresses:
        assert wait_for(lambda: connect(lab, address)) == "fw2"
    assert entries(lab, addresses) == {a: VMAC[version] for a in addresses}
    after = seen(lab)
    # The block is 65,536 (or 4,096) addresses; the takeover sent a few frames from the vmac.
    frames = after["arps"] - before["arps"] if version == 4 else after["na"] - before["na"]
    assert 1 <= frames <= 8, (before, after)
    assert {given for _, given in wait_for(lambda: who_answers(lab, addresses[1]))} == {VMAC[version]}


@pytest.mark.lab(heartbeat="switched")
def test_cluster_mac_serves_tcp_and_fails_over_without_a_frame_announced(lab) -> None:
    start_pair(lab, "cluster-mac")
    start_servers(lab)
    lab.resolve(V4 + V6)
    assert entries(lab, V4) == {a: CMAC[4] for a in V4}
    assert entries(lab, V6) == {a: CMAC[6] for a in V6}
    for address in (V4[1], V6[1]):
        answers = wait_for(lambda: who_answers(lab, address))
        assert {given for _, given in answers} == {CMAC[6 if ":" in address else 4]}, answers
    # Frames to the multicast MAC reach TCP: the filter made them PACKET_HOST.
    assert wait_for(lambda: connect(lab, V4[1])) == "fw1"
    assert wait_for(lambda: connect(lab, V6[1])) == "fw1"
    status = lab.status(2)
    assert status["buckets"]["blocks"]["ext"]["owned"] == 0
    # Both nodes asked their interface for the cluster MACs (what a real NIC needs; veth delivers anyway).
    for node in (1, 2):
        listed = lab.exec(f"fw{node}", ["cat", "/proc/net/dev_mcast"]).stdout
        for mac in CMAC.values():
            assert any(f.split()[1] == "ext0" and f.split()[4] == mac.replace(":", "") for f in listed.splitlines())
    before = seen(lab)

    lab.kill_node(1)
    lab.wait_state(2, "MASTER", timeout=10)
    assert wait_for(lambda: connect(lab, V4[1])) == "fw2"
    assert wait_for(lambda: connect(lab, V6[1])) == "fw2"
    assert lab.status(2)["buckets"]["blocks"]["ext"]["owned"] == 256
    # Nothing was announced: neighbours kept the cluster MAC.
    after = seen(lab)
    # (The client's own NUD probes of its entries are answered: a few ARP packets, not 65,536.)
    assert after["na"] == before["na"] and after["arps"] - before["arps"] <= 8, (before, after)
    assert entries(lab, V4) == {a: CMAC[4] for a in V4}

    # Without `meta pkttype set host` the same frames never reach TCP.
    lab.exec("fw2", ["nft", "flush", "chain", "netdev", "dpagent", "owned.ext"])
    lab.exec("fw2", ["nft", "add", "rule", "netdev", "dpagent", "owned.ext", "accept"])
    assert connect(lab, V4[2]) is None


@pytest.mark.lab(heartbeat="switched")
def test_a_sigkilled_agent_stops_accepting_its_cluster_mac_traffic_by_itself(lab) -> None:
    """Both nodes receive every frame to the cluster MAC: only the lease keeps the dead
    agent's node from answering next to the new master."""
    start_pair(lab, "cluster-mac")
    fw1, fw2 = lab.mac("fw1", "ext0"), lab.mac("fw2", "ext0")
    lab.resolve(V4[:1])
    lab.kill_agent(1, signal.SIGKILL)
    lab.wait_state(2, "MASTER", timeout=10)
    assert lab.holds_block(1)

    def only_fw2() -> bool:
        result = lab.start_probe(0.5).finish()
        return {mac for _, _, mac in result["replies"]} == {fw2}

    wait_for(only_fw2)
    assert only_fw2()
    assert fw1 != fw2


@pytest.mark.parametrize("l2", ["vmac", "cluster-mac"])
def test_cleanup_removes_a_sigkilled_agents_vmacs_and_cluster_filter(lab, l2: str) -> None:
    lab.start_agent(1, lab.write_config(1, block_v6=BLOCK_V6, l2=l2))
    lab.wait_state(1, "MASTER")

    def leftovers() -> tuple[str, str]:
        links = lab.exec("fw1", ["ip", "-br", "link", "show", "type", "macvlan"]).stdout
        tables = lab.exec("fw1", ["nft", "list", "tables"]).stdout
        return links, tables

    links, tables = wait_for(lambda: (found := leftovers()) and (("dpv4-51" in found[0]) == (l2 == "vmac"))
                             and found)
    assert ("table netdev dpagent" in tables) == (l2 == "cluster-mac")
    lab.kill_agent(1, signal.SIGKILL)
    done = lab.exec("fw1", [sys.executable, "-m", "agent.runtime.main", "-c", str(lab.dir / "fw1.toml"), "cleanup"],
                    check=False)
    assert done.returncode == 0, done.stderr
    links, tables = leftovers()
    assert "dpv" not in links and "dpagent" not in tables, (links, tables)
