"""A two-node cluster in network namespaces: the one topology for tests, benchmarks and `make run`.

    client --- [ext bridge] --- fw1 --- [int bridge] --- server
                           \\--- fw2 ---/
    heartbeat="direct":    fw1 ==hb0== fw2,  fw1 ==hb1== fw2   (two direct cables)
    heartbeat="switched":  fw1 --hb0-- [hb0 bridge] --hb0-- fw2, and the same for hb1

Over direct cables a dead peer takes the survivor's carrier with it, so carrier
loss tells at once; through a switch the survivor's link stays up and only the
dead interval tells. The nodes' interface names (hb0, hb1) are the same in both,
so one configuration serves both.

The block 198.18.0.0/16 (and 2001:db8:1::/116) is on-link for the client, so the
client ARPs for every address, as upstream routers do for a CLUSTERIP block: a
failover is only complete when the neighbours learned the new MAC.

Everything the lab creates lives in its namespaces, its processes and its
directory, made through one agent.netns.Namespaces, and close() removes all of it
(also on exceptions, Ctrl-C and SIGTERM). The lab changes no host-wide setting:
in particular it leaves the neighbour-table limits alone (see `resolve`).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agent.cli import request
from agent.dataplane.addresses import DPAGENT_PROTO
from agent.labprobe import PROBE_TARGETS
from agent.netns import Namespaces, batch, run_in

BLOCK_V4 = "198.18.0.0/16"
BLOCK_V6 = "2001:db8:1::/116"
EXT_NET = "203.0.113.0/24"
HB_GROUP = "239.255.77.77"
HB_GROUP_V6 = "ff02::77"
HB_PORT = 7788
CLIENT_EXT = "203.0.113.10"
CLIENT_EXT6 = "2001:db8:e::10"
SERVER_INT = "198.51.100.10"
# The inside gateway block's address, and the block address the client routes the server through.
INT_GW = "198.51.100.254"
CLIENT_GATEWAY = "198.18.0.1"
# The same for IPv6: the server, the inside network, its gateway block, and a block address
# of BLOCK_V6 the client routes the server through.
SERVER_INT6 = "2001:db8:5::10"
INT_NET6 = "2001:db8:5::/64"
INT_GW6 = "2001:db8:5::fe"
CLIENT_GATEWAY6 = "2001:db8:1::1"
KEY_HEX = "7d1b9f0e3c5a48f2a6b0c1d2e3f40516"
ROLES = ("seg", "client", "server")
HEARTBEATS = ("direct", "switched")
HB_LINKS = ("hb0", "hb1")
# Pinned interface indexes of the heartbeat links: fw1's, fw2's and (switched) their switch ports'.
# Distinct at the two ends of every veth, see Namespaces.veth.
# Node n's heartbeat port k has index HB_INDEX + 100 n + k; its switch port HB_PORT_INDEX + ...
HB_INDEX, HB_PORT_INDEX = 4000, 5000
MAX_NODES = 8
RESOLVE_CHUNK = 256
L2_MODES = ("garp", "vmac", "cluster-mac")
VRID = 51
# The IPv4 block's; the IPv6 block's ends in 2.
CLUSTER_MAC = "01:00:5e:00:01:01"


@dataclass(frozen=True)
class NodeAddresses:
    ext: str
    int_: str
    hb0: str
    hb1: str


NODES = {
    1: NodeAddresses("203.0.113.1", "198.51.100.1", "192.0.2.1", "192.0.2.5"),
    2: NodeAddresses("203.0.113.2", "198.51.100.2", "192.0.2.2", "192.0.2.6"),
}


def node_addresses(count: int) -> dict[int, NodeAddresses]:
    """The nodes' addresses: NODES for a pair, a wider plan for up to MAX_NODES."""
    if count == 2:
        return dict(NODES)
    return {n: NodeAddresses(f"203.0.113.{n}", f"198.51.100.{n}", f"192.0.2.{n}", f"192.0.2.{16 + n}")
            for n in range(1, count + 1)}


@dataclass
class Probe:
    """A running agent.labprobe in the client namespace."""

    proc: subprocess.Popen
    out: Path

    def finish(self, stop: bool = False) -> dict:
        """The probe's record; `stop` ends it now instead of at the end of its duration."""
        if stop and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)
        return json.loads(self.out.read_text())


class Lab:
    """Build with `with Lab() as lab:`; every name is unique to this lab.

    `heartbeat` is the topology of the two heartbeat links: "direct" (two veth
    cables between fw1 and fw2) or "switched" (each through a bridge of its own).
    """

    def __init__(self, prefix: str | None = None, heartbeat: str = "direct", nodes: int = 2) -> None:
        if heartbeat not in HEARTBEATS:
            raise ValueError(f"heartbeat must be one of {HEARTBEATS}, not {heartbeat!r}")
        if not 2 <= nodes <= MAX_NODES or (nodes > 2 and heartbeat == "direct"):
            raise ValueError(f"{nodes} nodes: 2 with direct cables, 2..{MAX_NODES} switched")
        self.addresses = node_addresses(nodes)
        # A pair's heartbeat links are /30s (cables or switches); beyond, switches with a /28 each.
        self.hb_prefixlen = 30 if nodes == 2 else 28
        self.prefix = prefix or f"dpl{secrets.token_hex(3)}"
        self.heartbeat = heartbeat
        self.netns = Namespaces(self.prefix)
        self.dir = Path(tempfile.mkdtemp(prefix=f"dpagent-{self.prefix}-"))
        self.agents: dict[int, subprocess.Popen] = {}
        self._names: dict[str, str] = {}

    def ns(self, role: str) -> str:
        return self._names[role]

    # --- building -----------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _batch(self, role: str, commands: list[str]) -> None:
        batch(self.ns(role), commands)

    def _sysctl(self, role: str, *settings: str) -> None:
        self.exec(role, ["sysctl", "-q", "-w", *settings])

    def build(self) -> None:
        spaces = self.netns
        for role in (*ROLES, *(f"fw{n}" for n in self.addresses)):
            self._names[role] = spaces.new(role)
        seg = self.ns("seg")
        self._sysctl("seg", "net.ipv6.conf.all.disable_ipv6=1")
        for node in self.addresses:
            fw = self.ns(f"fw{node}")
            spaces.veth(fw, "ext0", seg, f"fw{node}-ext", up=False)
            spaces.veth(fw, "int0", seg, f"fw{node}-int", up=False)
        spaces.veth(self.ns("client"), "ext0", seg, "cl-ext", up=False)
        spaces.veth(self.ns("server"), "int0", seg, "srv-int", up=False)
        spaces.bridge(seg, "br-ext", *(f"fw{n}-ext" for n in self.addresses), "cl-ext")
        spaces.bridge(seg, "br-int", *(f"fw{n}-int" for n in self.addresses), "srv-int")
        self._build_heartbeat()
        for node, addrs in self.addresses.items():
            role = f"fw{node}"
            self._batch(role, [
                f"addr add {addrs.ext}/24 dev ext0", f"addr add {addrs.int_}/24 dev int0",
                f"addr add {addrs.hb0}/{self.hb_prefixlen} dev hb0", f"addr add {addrs.hb1}/{self.hb_prefixlen} dev hb1",
                "link set ext0 up", "link set int0 up", "link set hb0 up", "link set hb1 up",
                f"route add {SERVER_INT}/32 dev int0", f"route add {CLIENT_EXT6}/128 dev ext0",
            ])
            self._sysctl(role, "net.ipv4.ip_forward=1", "net.ipv6.conf.ext0.accept_dad=0",
                         "net.ipv6.conf.hb0.accept_dad=0", "net.ipv6.conf.hb1.accept_dad=0")
        self._batch("client", [
            f"addr add {CLIENT_EXT}/24 dev ext0", f"addr add {CLIENT_EXT6}/64 dev ext0 nodad", "link set ext0 up",
            f"route add {BLOCK_V4} dev ext0", f"route add {BLOCK_V6} dev ext0",
        ])
        self._batch("server", [
            f"addr add {SERVER_INT}/24 dev int0", "link set int0 up", f"route add default via {NODES[1].int_}",
        ])

    def _build_heartbeat(self) -> None:
        """hb0 and hb1 on both nodes: direct cables, or each link through a switch of its own.

        Every veth end has a pinned index distinct from its peer's (see Namespaces.veth):
        otherwise the survivor's carrier loss over a direct cable may arrive up to a
        second late, which on two real machines, not sharing one linkwatch, it would not.
        The switches flood multicast (no IGMP/MLD snooping), so the heartbeat's delivery
        does not hang on the agents' membership reports and a segment without a querier."""
        seg = self.ns("seg")
        for offset, link in enumerate(HB_LINKS):
            if self.heartbeat == "direct":
                self.netns.veth(self.ns("fw1"), link, self.ns("fw2"), link, index_a=HB_INDEX + 100 + offset,
                                index_b=HB_INDEX + 200 + offset, up=False)
                continue
            ports = []
            for node in self.addresses:
                port = f"fw{node}-{link}"
                self.netns.veth(self.ns(f"fw{node}"), link, seg, port, index_a=HB_INDEX + 100 * node + offset,
                                index_b=HB_PORT_INDEX + 100 * node + offset, up=False)
                ports.append(port)
            self.netns.bridge(seg, f"br-{link}", *ports, options=("mcast_snooping", "0"))

    def mac(self, role: str, ifname: str) -> str:
        out = self.exec(role, ["ip", "-j", "link", "show", ifname]).stdout
        return json.loads(out)[0]["address"]

    def resolve(self, addresses: list[str], timeout: float = 30.0) -> None:
        """Have the client resolve `addresses` (IPv4 and IPv6, on-link) and keep the entries.

        Each entry is made by `ip neigh add ADDR dev ext0 extern_learn use`: `use` makes
        the kernel resolve it exactly as a first packet to ADDR would (a real ARP request
        or neighbour solicitation, filled in by the holder's reply, later updated by
        GARPs and unsolicited NAs like any other entry); `extern_learn` keeps it out of
        the neighbour table's garbage collection and out of the count that gc_thresh3
        caps (neigh_add() creates it exempt_from_gc, and a non-admin update never
        clears the flag, net/core/neighbour.c).

        That is why the lab needs no raised limits: gc_thresh1-3 exist only in
        init_net's /proc/sys/net/ipv{4,6}/neigh/default/ (a namespace has no `default`
        directory on this kernel) and cap the gc-counted entries of every namespace
        on the host together, 1,024 per family by default. Raising them would change
        the host for every other user and stay raised after a SIGKILLed run.

        Addresses go RESOLVE_CHUNK at a time, each chunk resolved before the next, so
        a burst of requests never overflows a receiver's backlog."""
        client = self.ns("client")
        for first in range(0, len(addresses), RESOLVE_CHUNK):
            chunk = addresses[first:first + RESOLVE_CHUNK]
            batch(client, [f"neigh add {a} dev ext0 extern_learn use" for a in chunk])
            deadline = time.monotonic() + timeout
            while pending := self._unresolved(chunk):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(pending)} of {len(chunk)} addresses not resolved by the client "
                                       f"within {timeout} s, e.g. {pending[:3]}")
                failed = [a for a, state in pending if state == "FAILED"]
                if failed:  # lost requests: ask again, as the next packet would
                    batch(client, [f"neigh change {a} dev ext0 extern_learn use" for a in failed])
                time.sleep(0.02)

    def _unresolved(self, wanted: list[str]) -> list[tuple[str, str]]:
        entries = json.loads(self.exec("client", ["ip", "-j", "neigh", "show", "dev", "ext0"]).stdout or "[]")
        state = {ipaddress.ip_address(e["dst"]): (e.get("state") or ["NONE"])[0] for e in entries}
        found = [(a, state.get(ipaddress.ip_address(a), "NONE")) for a in wanted]
        return [(a, s) for a, s in found if s not in ("REACHABLE", "STALE", "DELAY", "PROBE")]

    # --- processes ------------------------------------------------------------------

    def spawn(self, role: str, argv: list[str], **popen) -> subprocess.Popen:
        """Start a process in a namespace, in its own process group so close() can end it whole."""
        return self.netns.spawn(self.ns(role), argv, **popen)

    def start_probe(self, seconds: float, block: str = BLOCK_V4, count: int = PROBE_TARGETS,
                    realtime: bool = False, role: str = "client", ifname: str = "ext0") -> Probe:
        """Echo requests from the client (or `role`, on `ifname`) to `count` addresses across
        `block` (the first and the last usable one among them), each address every 1 ms on its own."""
        out = self.dir / f"probe-{secrets.token_hex(3)}.json"
        argv = [sys.executable, "-m", "agent.labprobe", "--block", block, "--count", str(count), "--ifname", ifname,
                "--duration", str(seconds), "--out", str(out)] + (["--realtime"] if realtime else [])
        proc = self.spawn(role, argv, stdout=subprocess.PIPE, text=True)
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the probe did not start")
        return Probe(proc, out)

    def serve(self, node: int, port: int, kind: str = "serve") -> subprocess.Popen:
        """A TCP server on fw<node> (agent.labflows `serve` or `echo`), listening once this returns."""
        proc = self.spawn(f"fw{node}", [sys.executable, "-m", "agent.labflows", kind, f"fw{node}", str(port)],
                          stdout=subprocess.PIPE, text=True)
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"fw{node}: the {kind} server on port {port} did not start")
        return proc

    def add_client_sources(self, sources: list[str], route: str | None = None) -> None:
        """More source addresses on the client, for active/active flows (agent.labflows). For a
        range off the segment (`route`), the nodes reach it through the client, so that each
        keeps one neighbour entry rather than one per source."""
        self._batch("client", [f"addr add {src}/32 dev ext0" for src in sources])
        for node in self.addresses if route else ():
            self._batch(f"fw{node}", [f"route add {route} via {CLIENT_EXT} dev ext0"])

    def exec(self, role: str, argv: list[str], check: bool = True, input: str | None = None
             ) -> subprocess.CompletedProcess:
        return run_in(self.ns(role), argv, check=check, input=input)

    def socket_path(self, node: int) -> str:
        return str(self.dir / f"fw{node}.sock")

    def write_config(self, node: int, *, priority: int | None = None, preempt: bool = False,
                     preempt_delay: float = 0.0, advert_interval: float = 0.05,
                     key_hex: str = KEY_HEX, block: str | list[str] = BLOCK_V4, block_v6: bool | str = False,
                     announce: str = "", heartbeat: str = "group", l2: str = "garp",
                     backend: str = "nft", shared: bool = False, metrics: str | None = None,
                     conntrack: str | None = None, extra: str = "") -> Path:
        """An agent configuration for fw<node>; `block` its IPv4 prefix (or prefixes);
        `announce` is extra TOML for the block;
        `l2` its L2 mode (vmac: VRID 51; cluster-mac: one cluster MAC per block, its
        filter in `backend`, "nft" or "xdp"; `shared`: the IPv4 block active/active;
        `metrics`: the Prometheus listener's ADDRESS:PORT; `conntrack`: the sync's mode,
        over hb1; `extra`: more TOML at the end);
        `block_v6` adds the IPv6 block (True: BLOCK_V6, or a prefix inside it);
        `heartbeat` is "group" (IPv4 multicast), "group6" (IPv6 link-local multicast)
        or "unicast" (the peer's hb addresses)."""
        key = self.dir / f"fw{node}.key"
        key.write_text(f"1 {key_hex}\n")
        key.chmod(0o600)
        v6_block = f"""
[[block]]
name = "ext6"
interface = "ext0"
prefixes = ["{BLOCK_V6 if block_v6 is True else block_v6}"]
{announce}
{self._l2(l2, 2, backend)}
""" if block_v6 else ""
        path = self.dir / f"fw{node}.toml"
        path.write_text(f"""\
[node]
id = {node}
priority = {priority if priority is not None else 200 - 50 * node if node <= 2 else 100 - 10 * node}
preempt = {"true" if preempt else "false"}
preempt_delay = {preempt_delay}
advert_interval = {advert_interval}
dead_multiplier = 3
state_dir = "{self.dir / f"fw{node}-state"}"

[auth]
key_file = "{key}"

[control]
socket = "{self.socket_path(node)}"
{f'[metrics]{chr(10)}listen = "{metrics}"' if metrics else ""}

[[heartbeat]]
interface = "hb0"
{self._heartbeat_target(node, "hb0", heartbeat)}
port = {HB_PORT}

[[heartbeat]]
interface = "hb1"
{self._heartbeat_target(node, "hb1", heartbeat)}
port = {HB_PORT}

[[block]]
name = "ext"
interface = "ext0"
prefixes = [{", ".join(f'"{p}"' for p in ([block] if isinstance(block, str) else block))}]
mode = "{"active-active" if shared else "active-passive"}"
{announce}
{self._l2(l2, 1, backend)}
{v6_block}
{self._conntrack(node, conntrack) if conntrack else ""}
{extra}""")
        return path

    def _conntrack(self, node: int, mode: str) -> str:
        peers = ", ".join(f'"{a.hb1}"' for n, a in self.addresses.items() if n != node)
        return f'[conntrack]\ninterface = "hb1"\npeers = [{peers}]\nmode = "{mode}"\n'

    def route_through_cluster(self) -> None:
        """Client-to-server flows forwarded by the holder: the client reaches the server
        through a block address, the server answers through the inside gateway block
        (INT_GW, INT_GW6), and each node's stateful ruleset SNATs what it forwards to that
        gateway, as a firewall pair does. Only entries synced from the master let a new
        holder carry those flows on: new TCP without SYN is dropped and tcp_loose is off.
        IPv6 needs the block BLOCK_V6 (or a prefix of it holding CLIENT_GATEWAY6)."""
        self._batch("client", [f"route add {SERVER_INT}/32 via {CLIENT_GATEWAY} dev ext0",
                               f"route add {SERVER_INT6}/128 via {CLIENT_GATEWAY6} dev ext0"])
        self._batch("server", ["route del default", f"route add default via {INT_GW}",
                               f"addr add {SERVER_INT6}/64 dev int0 nodad",
                               f"route add default via {INT_GW6} dev int0"])
        ruleset = f"""
table inet labfw {{
    chain forward {{
        type filter hook forward priority 0; policy drop;
        ct state invalid drop
        ct state established,related accept
        iifname "ext0" oifname "int0" ct state new tcp flags & (fin | syn | rst | ack) == syn accept
        iifname "ext0" oifname "int0" ct state new meta l4proto {{ udp, icmp, ipv6-icmp }} accept
    }}
}}
table ip labnat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat;
        oifname "int0" snat to {INT_GW}
    }}
}}
table ip6 labnat6 {{
    chain postrouting {{
        type nat hook postrouting priority srcnat;
        oifname "int0" snat to {INT_GW6}
    }}
}}
"""
        for node in self.addresses:
            role = f"fw{node}"
            self._batch(role, [f"addr add {INT_NET6.replace('::/64', f'::{node}/64')} dev int0 nodad"])
            self._sysctl(role, "net.netfilter.nf_conntrack_tcp_loose=0", "net.ipv6.conf.all.forwarding=1")
            self.exec(role, ["nft", "-f", "-"], input=ruleset)

    @staticmethod
    def inside_block() -> str:
        """The inside gateways as blocks of their own (the classic internal VIP), IPv4 and IPv6."""
        return (f'[[block]]\nname = "int"\ninterface = "int0"\naddresses = ["{INT_GW}"]\n'
                f'[[block]]\nname = "int6"\ninterface = "int0"\naddresses = ["{INT_GW6}"]\n')

    @staticmethod
    def _l2(mode: str, nth: int, backend: str) -> str:
        if mode == "vmac":
            return f'[block.l2]\nmode = "vmac"\nvrid = {VRID}\n'
        if mode == "cluster-mac":
            return (f'[block.l2]\nmode = "cluster-mac"\ncluster_mac = "{CLUSTER_MAC[:-1]}{nth}"\n'
                    f'backend = "{backend}"\n')
        return ""

    def _heartbeat_target(self, node: int, link: str, kind: str) -> str:
        if kind == "group":
            return f'group = "{HB_GROUP}"'
        if kind == "group6":
            return f'group = "{HB_GROUP_V6}"'
        peers = [getattr(a, link) for n, a in self.addresses.items() if n != node]
        return "peers = [" + ", ".join(f'"{p}"' for p in peers) + "]"

    def start_agent(self, node: int, config: Path | None = None, *, log: Path | None = None) -> subprocess.Popen:
        config = config or self.write_config(node)
        out = open(log or self.dir / f"fw{node}.log", "ab")
        proc = self.spawn(f"fw{node}", [sys.executable, "-m", "agent.runtime.main", "-c", str(config)],
                          stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.agents[node] = proc
        return proc

    def status(self, node: int, timeout: float = 2.0) -> dict | None:
        try:
            return request(self.socket_path(node), "status", timeout=timeout)
        except (OSError, ValueError):
            return None

    def state(self, node: int) -> str | None:
        status = self.status(node)
        return status["node"]["state"]["name"] if status else None

    def wait_state(self, node: int, state: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(node)
            if status and status["node"]["state"]["name"] == state:
                return status
            time.sleep(0.02)
        raise TimeoutError(f"fw{node} not {state} within {timeout} s (now {self.state(node)})")

    def wait_master_seen(self, node: int, master: int, timeout: float = 10.0) -> dict:
        """Wait until fw<node> is BACKUP and believes fw<master> is the master."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(node)
            if status and status["node"]["state"]["name"] == "BACKUP" and status["node"]["master"] == master:
                return status
            time.sleep(0.02)
        raise TimeoutError(f"fw{node} does not follow master fw{master} within {timeout} s")

    def wait_heard_on(self, node: int, links: list[str], timeout: float = 10.0) -> dict:
        """Wait until fw<node> hears its peer on exactly these heartbeat links: the frame
        that made it a backup came on one link, the other link's may come a moment later."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(node)
            if status and status["node"]["peers"] and status["node"]["peers"][0]["links"] == links:
                return status
            time.sleep(0.02)
        raise TimeoutError(f"fw{node} does not hear its peer on {links} within {timeout} s")

    def holds_block(self, node: int) -> bool:
        """True if the kernel of fw<node> has any AnyIP route of dpagent's, whatever the agent says."""
        out = self.exec(f"fw{node}", ["ip", "route", "show", "table", "local", "proto", str(DPAGENT_PROTO)]).stdout
        return bool(out.strip())

    def links(self, node: int, up: bool) -> None:
        verb = "up" if up else "down"
        self._batch(f"fw{node}", [f"link set {name} {verb}" for name in ("ext0", "hb0", "hb1")])

    def kill_agent(self, node: int, sig: int = signal.SIGKILL) -> None:
        proc = self.agents[node]
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(timeout=10)

    def kill_node(self, node: int) -> float:
        """Node death: SIGKILL the agent and take its links down at the same instant."""
        proc = self.agents[node]
        downs = subprocess.Popen(["ip", "-n", self.ns(f"fw{node}"), "-batch", "-"], stdin=subprocess.PIPE, text=True)
        at = time.time()
        os.killpg(proc.pid, signal.SIGKILL)
        downs.communicate("link set ext0 down\nlink set hb0 down\nlink set hb1 down\n")
        proc.wait(timeout=10)
        return at

    # --- teardown ---------------------------------------------------------------------

    def close(self) -> None:
        """End every process the lab started and delete its namespaces and its directory."""
        try:
            self.netns.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


FAULTS = ("kill", "hang", "graceful")
FAULT_TEXT = {
    "kill": "fw1: agent SIGKILLed and its links set down (node death)",
    "hang": "fw1: agent SIGSTOPped (a hung agent: its kernel answers until the gate's lease runs out)",
    "graceful": "fw1: agentctl failover (a resign frame; fw1 releases the block)",
}
# What the timeline calls the moment of the failure, t = 0.
FAULT_NOUN = {"kill": "kill", "hang": "hang", "graceful": "hand-over"}
DEMO_PLOT = Path(__file__).resolve().parents[1] / "bench" / "results" / "demo-timeline.png"


def demo_block(text: str) -> str:
    """A block for the demo: a prefix length ("/24") or a prefix inside BLOCK_V4, which is on-link
    for the client."""
    block = ipaddress.ip_network(f"{BLOCK_V4.split('/')[0]}{text}" if text.startswith("/") else text)
    if not block.subnet_of(ipaddress.ip_network(BLOCK_V4)):
        raise ValueError(f"the demo's block must lie inside {BLOCK_V4}, not {block}")
    return str(block)


def fail(lab: Lab, fault: str) -> float:
    """Make fw1 fail as `fault` says; the time it did."""
    if fault == "kill":
        return lab.kill_node(1)
    at = time.time()
    if fault == "hang":
        os.killpg(lab.agents[1].pid, signal.SIGSTOP)
    else:
        request(lab.socket_path(1), "failover")
    return at


def demo(probe_count: int = PROBE_TARGETS, heartbeat: str = "direct", block: str = BLOCK_V4, l2: str = "garp",
         fault: str = "kill", plot: Path | None = DEMO_PLOT) -> int:
    """`make run`: two agents hold `block`, the master fails as `fault` says, the timeline is
    printed and drawn to `plot`."""
    from agent.cli import render_status
    from agent.labprobe import address_outages, outage_stats

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    with Lab(heartbeat=heartbeat) as lab:
        print(f"lab {lab.prefix}: client, fw1, fw2, server; block {block} on-link for the client; "
              f"heartbeat links {heartbeat}; l2 mode {l2}; fault {fault}")
        lab.start_agent(1, lab.write_config(1, block=block, l2=l2))
        lab.wait_state(1, "MASTER", timeout=30)
        lab.start_agent(2, lab.write_config(2, block=block, l2=l2))
        lab.wait_master_seen(2, 1, timeout=30)
        print("\n== fw1 (agentctl status) ==")
        print(render_status(lab.status(1)))
        probe = lab.start_probe(4.0, block=block, count=probe_count, realtime=True)
        print(f"\nprobing {probe_count} addresses across {block} (first and last usable among them), "
              "each every 1 ms, from the client")
        time.sleep(1.0)
        failed = fail(lab, fault)
        print(FAULT_TEXT[fault])
        lab.wait_state(2, "MASTER", timeout=5)
        result = probe.finish()
        status = lab.status(2)
        took = status["transitions"][-1]
        fw2_mac = lab.mac("fw2", "ext0")
        outages = address_outages(result, failed, fw2_mac)
        back = sorted((o for o in outages if o.back), key=lambda o: o.first_after)
        stats = outage_stats(outages)
        events = [(took["at"] - failed, f"fw2 {took['old']} -> {took['new']}: {took['reason']}")]
        if back:
            events.append((max(o.last_before for o in outages) - failed, "last reply from fw1"))
            events.append((back[0].first_after - failed, f"first address back: {back[0].target}"))
            events.append((back[-1].first_after - failed, f"last address back: {back[-1].target}"))
        for step in took["steps"]:
            events.append((step["started"] - failed, f"step {step['name']:<14} took {step['seconds'] * 1000:.1f} ms"
                           + ("" if step["ok"] else " (FAILED)")))
        print(f"\n== timeline (t = 0 at the {FAULT_NOUN[fault]}; fw1's kernel answers until its links are down"
              " or its lease runs out) ==")
        for at, what in sorted(events):
            print(f"{_ms(at)}  {what}")
        print(f"\n== outage per address (its last reply before the {FAULT_NOUN[fault]} to its first from fw2) ==")
        for o in outages:
            note = "" if o.back else "  (never back: lower bound)"
            print(f"  {o.target:<16}{_ms(o.seconds)}{note}")
        print(f"\noutage over {len(outages)} addresses: worst {stats['worst'] * 1000:.1f} ms, "
              f"median {stats['median'] * 1000:.1f} ms, first {stats['first'] * 1000:.1f} ms; the worst is what "
              "a user of the whole block lives with (the announcement reaches the addresses one after another)")
        print("\n== fw2 (agentctl status) ==")
        print(render_status(status))
        if plot:
            nodes = {lab.mac("fw1", "ext0"): "fw1", fw2_mac: "fw2"}
            print(f"\ntimeline drawn to {draw(plot, result, failed, nodes, outages, took, block, l2, fault)}")
    print(f"\nlab {lab.prefix} removed")
    return 0


def draw(path: Path, result: dict, failed: float, nodes: dict[str, str], outages: list, took: dict, block: str,
         l2: str, fault: str) -> str:
    """The demo's timeline as a PNG (agent.labplot); where it went, or why not."""
    try:
        from agent import labplot
    except ImportError as exc:  # pragma: no cover - setup installs python3-matplotlib
        return f"nowhere: {exc} (apt install python3-matplotlib)"
    detect, steps = labplot.takeover(took)
    labplot.timeline(path, result, failed, nodes, outages=outages, detect=detect, steps=steps,
                     failure=FAULT_NOUN[fault],
                     title=f"make run: {block}, l2 {l2}, fault {fault}: fw1 to fw2")
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.lab", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["demo"])
    parser.add_argument("--probe-count", type=int, default=PROBE_TARGETS)
    parser.add_argument("--heartbeat", choices=HEARTBEATS, default="direct")
    parser.add_argument("--block", type=demo_block, default=BLOCK_V4,
                        help=f"the block: a prefix length (/24) or a prefix inside {BLOCK_V4} (default the /16)")
    parser.add_argument("--l2", choices=L2_MODES, default="garp", help="the block's L2 mode (default garp)")
    parser.add_argument("--fault", choices=FAULTS, default="kill",
                        help="how fw1 fails: kill (node death), hang (SIGSTOP), graceful (agentctl failover)")
    parser.add_argument("--plot", type=Path, default=DEMO_PLOT, help="where the timeline PNG goes")
    parser.add_argument("--no-plot", dest="plot", action="store_const", const=None, help="draw no timeline")
    args = parser.parse_args(argv)
    try:
        return demo(args.probe_count, args.heartbeat, args.block, args.l2, args.fault, args.plot)
    except KeyboardInterrupt:
        print("interrupted; lab removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
