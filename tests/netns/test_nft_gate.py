"""The nftables gate on a real kernel, with real ARP, NDP and ping.

Two namespaces joined by a veth: "node" holds a block the way a live agent
leaves it (an AnyIP route for 198.18.0.0/24 plus a loose /32, IPv6 addresses of
2001:db8:1::/124 and a loose one on its veth) and "client" talks to it. Whether
the node serves the block is then up to the gate alone. Both ends have permanent neighbour entries for the ping
targets and their peers, so a ping tests the incoming drop on its own,
whatever ARP / NDP do.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import select
import socket
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import ip_address, ip_network

import pytest

from agent.config import Block
from agent.core import frames
from agent.dataplane.nft import NftStep
from agent.netns import enter
from waiting import wait_for

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
CLONE_NEWNET = 0x40000000
NODE_V4, CLIENT_V4 = "192.0.2.1", "192.0.2.2"
# A client address the node has no permanent neighbour entry for: it must ARP for it.
CLIENT_V4_UNKNOWN = "192.0.2.3"
NODE_V6, CLIENT_V6 = "2001:db8::1", "2001:db8::2"
BLOCK = Block("ext", "n0", (ip_network("198.18.0.0/24"), ip_network("2001:db8:1::/124")),
              (ip_address("203.0.113.7"), ip_address("2001:db8:2::7")))
# One of each kind of member: the prefix sets and the loose-address sets.
V4_TARGETS = ("198.18.0.5", "203.0.113.7")
V6_TARGETS = ("2001:db8:1::5", "2001:db8:2::7")
DEADLINE = 20.0



@dataclass
class Pair:
    node: str
    client: str
    node_mac: bytes

    def exec(self, netns: str, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True)

    def nft(self, *argv: str) -> str:
        done = self.exec(self.node, "nft", *argv)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def arp_reply(self, target: str) -> bool:
        return self.exec(self.client, "arping", "-c", "1", "-w", "1", "-I", "c0", target).returncode == 0

    def ping(self, target: str) -> bool:
        return self.exec(self.client, "ping", "-c", "1", "-W", "1", target).returncode == 0

    def neighbour_advert(self, target: str, timeout: float = 1.0) -> bool:
        """Solicit `target` from the client and wait for the node's advertisement."""
        with enter(self.client):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IPV6))
        with sock:
            sock.bind(("c0", 0))
            mac = sock.getsockname()[4]
            wanted = ip_address(target).packed
            sock.send(solicitation(mac, ip_address(CLIENT_V6).packed, wanted))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                if not select.select([sock], [], [], left)[0]:
                    break
                frame = sock.recv(2048)
                if frame[20] == 58 and frame[54] == 136 and frame[62:78] == wanted:
                    return True
        return False

    def node_arp_from(self, source: str, timeout: float = 1.0) -> bool:
        """Make the node's kernel ARP for the client with `source` as sender (a ping from
        that address with an empty neighbour cache) and watch for it on the client."""
        with enter(self.client):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        with sock:
            sock.bind(("c0", 0))
            self.exec(self.node, "ip", "neigh", "flush", "dev", "n0")
            pinger = subprocess.Popen(["ip", "netns", "exec", self.node, "ping", "-c", "1", "-W", "1",
                                       "-I", source, CLIENT_V4_UNKNOWN], stdout=subprocess.DEVNULL)
            try:
                wanted = socket.inet_aton(source)
                deadline = time.monotonic() + timeout
                while (left := deadline - time.monotonic()) > 0:
                    if not select.select([sock], [], [], left)[0]:
                        break
                    if sock.recv(2048)[28:32] == wanted:
                        return True
                return False
            finally:
                pinger.wait(timeout=10)

    def serves(self) -> dict[str, bool]:
        """Every way the node can serve the block, probed from the client."""
        seen = {f"arp {t}": self.arp_reply(t) for t in V4_TARGETS}
        seen |= {f"na {t}": self.neighbour_advert(t) for t in V6_TARGETS}
        seen |= {f"ping {t}": self.ping(t) for t in V4_TARGETS + V6_TARGETS}
        seen["node arp from 198.18.0.9"] = self.node_arp_from("198.18.0.9")
        return seen

    def own_address_works(self) -> bool:
        return (self.arp_reply(NODE_V4) and self.ping(NODE_V4) and self.neighbour_advert(NODE_V6)
                and self.ping(NODE_V6))


def solicitation(mac: bytes, source: bytes, target: bytes) -> bytes:
    group = bytes.fromhex("ff0200000000000000000001ff") + target[13:]
    unsummed = struct.pack("!BBHI", 135, 0, 0, 0) + target + struct.pack("!BB", 1, 1) + mac
    csum = frames.icmpv6_checksum(source, group, unsummed)
    message = unsummed[:2] + struct.pack("!H", csum) + unsummed[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(message), 58, 255) + source + group
    return b"\x33\x33" + group[12:] + mac + struct.pack("!H", ETH_P_IPV6) + ip6 + message


@pytest.fixture
def pair(netns_factory) -> Pair:
    node, client = netns_factory("gate-node"), netns_factory("gate-client")
    ip = netns_factory.ip
    ip("link", "add", "n0", "type", "veth", "peer", "name", "c0", "netns", client, netns=node)
    ip("-batch", "-", netns=node, stdin="\n".join([
        "link set n0 up", f"addr add {NODE_V4}/24 dev n0", f"addr add {NODE_V6}/64 dev n0 nodad",
        "route add local 198.18.0.0/24 dev lo table local", "route add local 203.0.113.7/32 dev lo table local",
        *(f"addr add 2001:db8:1::{i:x}/128 dev n0 nodad" for i in range(16)),
        "addr add 2001:db8:2::7/128 dev n0 nodad"]) + "\n")
    node_mac = bytes.fromhex(ip("-br", "link", "show", "n0", netns=node).split()[2].replace(":", ""))
    mac = ":".join(f"{b:02x}" for b in node_mac)
    client_mac = ip("-br", "link", "show", "c0", netns=client).split()[2]
    ip("-batch", "-", netns=node, stdin="".join(
        f"neigh replace {peer} lladdr {client_mac} dev n0 nud permanent\n" for peer in (CLIENT_V4, CLIENT_V6)))
    ip("-batch", "-", netns=client, stdin="\n".join([
        "link set c0 up", f"addr add {CLIENT_V4}/24 dev c0", f"addr add {CLIENT_V4_UNKNOWN}/24 dev c0",
        f"addr add {CLIENT_V6}/64 dev c0 nodad",
        "route add 198.18.0.0/24 dev c0", "route add 203.0.113.7/32 dev c0",
        "route add 2001:db8:1::/124 dev c0", "route add 2001:db8:2::7/128 dev c0",
        *(f"neigh replace {t} lladdr {mac} dev c0 nud permanent" for t in V4_TARGETS + V6_TARGETS)]) + "\n")
    return Pair(node, client, node_mac)


def _into(netns: str) -> None:
    """Executor initializer: the worker thread lives in `netns` for good."""
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET):
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


class NodeLoop:
    """Runs coroutines on one thread that lives in the node namespace, as the daemon's
    loop lives in its own: the gate's lease messages go from the loop's thread."""

    def __init__(self, node: str) -> None:
        self._thread = ThreadPoolExecutor(1, initializer=_into, initargs=(node,))

    def run(self, coroutine):
        return self._thread.submit(asyncio.run, coroutine).result()

    def refresh(self, step: NftStep, blocks: list[Block]) -> None:
        """What the runtime does on every advert timer."""
        async def tick() -> None:
            step.refresh(blocks)
        self.run(tick())

    def close(self) -> None:
        self._thread.shutdown(wait=True)


@pytest.fixture
def loop(pair):
    node_loop = NodeLoop(pair.node)
    yield node_loop
    node_loop.close()


@pytest.fixture
def make_step(pair):
    pools: list[ThreadPoolExecutor] = []

    def make(lease: float = 30.0) -> NftStep:
        pools.append(ThreadPoolExecutor(1, initializer=_into, initargs=(pair.node,)))
        return NftStep(pools[-1], lease)

    yield make
    for pool in pools:
        pool.shutdown(wait=True)


def assert_serves(pair: Pair, wanted: bool) -> None:
    """Positive probes are retried until a generous deadline; a negative probe waits its
    own timeout (1 s) for an answer that must not come."""
    if wanted:
        wait_for(lambda: all(pair.serves().values()), DEADLINE, f"the node serves the block: {pair.serves()}")
    else:
        seen = pair.serves()
        assert not any(seen.values()), seen


def test_closed_after_prepare_open_after_take_closed_after_release(pair, make_step, loop):
    # Without a gate, the routes and addresses a dead agent left answer for the block.
    assert_serves(pair, True)
    step = make_step()
    loop.run(step.prepare([BLOCK]))
    assert_serves(pair, False)
    assert pair.own_address_works()

    result = loop.run(step.take(BLOCK))
    assert result.ok and result.applied == 1, result
    assert_serves(pair, True)
    assert pair.own_address_works()

    result = loop.run(step.release(BLOCK))
    assert result.ok, result
    assert_serves(pair, False)
    assert pair.own_address_works()
    assert loop.run(step.leases()) == {"ext": None}


def test_without_refresh_the_lease_runs_out_and_the_node_stops_serving_by_itself(pair, make_step, loop):
    lease = 1.0
    step = make_step(lease)
    loop.run(step.prepare([BLOCK]))
    assert loop.run(step.take(BLOCK)).ok
    # Refreshed, the gate stays open well past one lease.
    refreshed_until = time.monotonic() + 3 * lease
    while time.monotonic() < refreshed_until:
        loop.refresh(step, [BLOCK])
        time.sleep(lease / 5)
    left = loop.run(step.leases())["ext"]
    assert left is not None and left > lease / 2, left
    assert pair.arp_reply(V4_TARGETS[0]) and pair.ping(V4_TARGETS[0])
    assert step.status()["refresh"]["failed"] == 0

    # The agent "hangs": nothing calls the step any more.
    stopped = time.monotonic()
    wait_for(lambda: not pair.arp_reply(V4_TARGETS[0]) and not pair.ping(V4_TARGETS[0]),
             lease + DEADLINE, "ARP and ping stop after the lease")
    assert time.monotonic() - stopped >= lease / 2
    assert loop.run(step.leases())["ext"] is None
    assert_serves(pair, False)


def test_an_operator_table_is_byte_for_byte_untouched(pair, make_step, loop):
    subprocess.run(["ip", "netns", "exec", pair.node, "nft", "-f", "-"], check=True, text=True, input=(
        "table inet filter {\n counter seen {}\n chain input {\n  type filter hook input priority 0; policy accept;\n"
        "  tcp dport 9 counter drop\n  udp dport 9 counter name seen\n }\n}\n"))
    before = pair.nft("-j", "list", "table", "inet", "filter")
    step = make_step()
    narrowed = Block("ext", "n0", (ip_network("198.18.0.0/25"), ip_network("2001:db8:1::/124")),
                     BLOCK.addresses + (ip_address("203.0.113.8"),))
    loop.run(step.prepare([BLOCK]))
    assert loop.run(step.take(BLOCK)).ok
    loop.refresh(step, [BLOCK])
    assert loop.run(step.adjust(BLOCK, narrowed)).ok
    assert loop.run(step.repair(narrowed)).ok
    assert loop.run(step.release(narrowed)).ok
    assert loop.run(step.remove_leftovers()).ok
    assert loop.run(make_step().remove_leftovers()).applied == 2
    assert pair.nft("-j", "list", "table", "inet", "filter") == before


def test_a_rejected_transaction_reports_libnftables_text_and_changes_nothing(pair, make_step, loop):
    step = make_step()
    loop.run(step.prepare([BLOCK]))
    before = [pair.nft("-j", "list", "table", family, "dpagent") for family in ("inet", "arp")]
    overlapping = Block("ext", "n0", BLOCK.prefixes + (ip_network("198.18.0.128/25"),), BLOCK.addresses)
    result = loop.run(step.adjust(BLOCK, overlapping))
    assert not result.ok and "Error:" in result.problem and "interval" in result.problem, result
    garbage = Block("ext", "n0", BLOCK.prefixes, BLOCK.addresses + ("198.18.0.300",))
    result = loop.run(step.adjust(BLOCK, garbage))
    assert not result.ok and result.problem.startswith("bad input"), result
    assert [pair.nft("-j", "list", "table", family, "dpagent") for family in ("inet", "arp")] == before
    # The gate still works as it was loaded.
    assert loop.run(step.take(BLOCK)).ok
    assert_serves(pair, True)


def test_one_bad_block_keeps_no_other_block_out(pair, make_step, loop):
    step = make_step()
    bad = Block("bad", "n0", (ip_network("198.51.100.0/24"), ip_network("198.51.100.0/25")), ())
    loop.run(step.prepare([bad, BLOCK]))
    status = step.status()
    assert set(status["problems"]) == {"bad"} and "Error:" in status["problems"]["bad"], status
    assert loop.run(step.take(BLOCK)).ok
    result = loop.run(step.take(bad))
    assert not result.ok and "has no gate" in result.problem
    loop.refresh(step, [bad, BLOCK])
    assert step.status()["refresh"]["failed"] == 0
    assert_serves(pair, True)
    # Fixed by a reload, the block taken while it had no gate gets one, open.
    loop.run(step.prepare([Block("bad", "n0", (ip_network("198.51.100.0/24"),), ()), BLOCK]))
    assert step.status()["problems"] == {}
    assert loop.run(step.leases())["bad"] is not None


def test_remove_leftovers_removes_table_dpagent_only_and_prepare_replaces_a_crashed_runs_gate(pair, make_step, loop):
    crashed = make_step()
    loop.run(crashed.prepare([BLOCK]))
    assert loop.run(crashed.take(BLOCK)).ok
    # The next run prepares over the crashed run's live lease: its gate starts closed.
    restarted = make_step()
    loop.run(restarted.prepare([BLOCK]))
    assert loop.run(restarted.leases()) == {"ext": None}
    assert_serves(pair, False)

    subprocess.run(["ip", "netns", "exec", pair.node, "nft", "add table inet filter; add table arp filter"],
                   check=True)
    cleanup = make_step()
    result = loop.run(cleanup.remove_leftovers())
    assert result.ok and result.applied == 2, result
    tables = pair.nft("list", "tables").split("\n")
    assert sorted(t for t in tables if t) == ["table arp filter", "table inet filter"]
    assert_serves(pair, True)


def test_a_flushed_ruleset_is_rebuilt_by_the_next_refresh(pair, make_step, loop):
    step = make_step()
    loop.run(step.prepare([BLOCK]))
    assert loop.run(step.take(BLOCK)).ok
    pair.nft("flush", "ruleset")

    async def advert_then_look() -> dict:
        step.refresh([BLOCK])
        # Queued in the worker behind the rebuild the refresh found necessary.
        return await step.leases()
    assert loop.run(advert_then_look())["ext"] is not None
    assert loop.run(step.repair(BLOCK)).applied == 0
    pair.nft("flush", "table", "inet", "dpagent")
    result = loop.run(step.repair(BLOCK))
    assert result.ok and result.applied == 1, result
    assert_serves(pair, True)
    loop.run(step.release(BLOCK))
    assert_serves(pair, False)


def test_an_address_moved_to_another_block_is_served_by_its_new_block(pair, make_step, loop):
    loose = ip_address("203.0.113.7")
    rest = Block("ext", "n0", BLOCK.prefixes, tuple(a for a in BLOCK.addresses if a != loose))
    old, new = Block("old", "n0", (), (loose,)), Block("new", "n0", (), (loose,))
    step = make_step()
    loop.run(step.prepare([old, rest]))
    assert loop.run(step.take(old)).ok and loop.run(step.take(rest)).ok
    wait_for(lambda: pair.arp_reply(str(loose)), DEADLINE, "the old block serves the address")
    # A reload moves the address: the old block keeps its gate while it is held.
    loop.run(step.prepare([rest, new]))
    assert loop.run(step.leases())["old"] is not None
    result = loop.run(step.release(old))
    assert result.ok and result.detail.get("removed") == "old", result
    assert ".old" not in pair.nft("list", "ruleset")
    assert loop.run(step.take(new)).ok
    wait_for(lambda: pair.arp_reply(str(loose)) and pair.ping(str(loose)), DEADLINE, "the new block serves the address")
