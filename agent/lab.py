"""A two-node cluster in network namespaces: the one topology for tests, benchmarks and `make run`.

    client --- [ext bridge] --- fw1 --- [int bridge] --- server
                           \\--- fw2 ---/
               fw1 ==hb0== fw2,  fw1 ==hb1== fw2   (two direct heartbeat links)

The block 198.18.0.0/16 (and 2001:db8:1::/116) is on-link for the client, so the
client ARPs for every address, as upstream routers do for a CLUSTERIP block: a
failover is only complete when the neighbours learned the new MAC. Everything the
lab creates (namespaces, processes, files, raised neighbour-table limits) it
removes again in close(), which runs on exceptions, Ctrl-C and SIGTERM too.
"""

from __future__ import annotations

import argparse
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

BLOCK_V4 = "198.18.0.0/16"
BLOCK_V6 = "2001:db8:1::/116"
EXT_NET = "203.0.113.0/24"
HB_GROUP = "239.255.77.77"
HB_GROUP_V6 = "ff02::77"
HB_PORT = 7788
CLIENT_EXT = "203.0.113.10"
SERVER_INT = "198.51.100.10"
KEY_HEX = "7d1b9f0e3c5a48f2a6b0c1d2e3f40516"
ROLES = ("seg", "client", "fw1", "fw2", "server")
NEIGH_ENTRIES = 16384


def _run(argv: list[str], *, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, text=True, capture_output=True, input=input)


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
    """Build with `with Lab() as lab:`; every name is unique to this lab."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"dpl{secrets.token_hex(3)}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"dpagent-{self.prefix}-"))
        self.procs: list[subprocess.Popen] = []
        self.agents: dict[int, subprocess.Popen] = {}
        self._created: list[str] = []
        self._neigh_restore: dict[str, str] = {}

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

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
        _run(["ip", "-n", self.ns(role), "-batch", "-"], input="\n".join(commands) + "\n")

    def _sysctl(self, role: str, *settings: str) -> None:
        _run(["ip", "netns", "exec", self.ns(role), "sysctl", "-q", "-w", *settings])

    def _raise_neighbour_limits(self) -> None:
        # The neighbour tables are shared by all namespaces and capped by init_net's
        # gc_thresh3 (1024 by default): a client caching thousands of block addresses needs more.
        for family in ("ipv4", "ipv6"):
            for name, value in (("gc_thresh3", NEIGH_ENTRIES), ("gc_thresh2", NEIGH_ENTRIES // 2)):
                path = Path(f"/proc/sys/net/{family}/neigh/default/{name}")
                current = path.read_text().strip()
                if int(current) < value:
                    self._neigh_restore[str(path)] = current
                    path.write_text(str(value))

    def build(self) -> None:
        self._raise_neighbour_limits()
        for role in ROLES:
            _run(["ip", "netns", "add", self.ns(role)])
            self._created.append(self.ns(role))
            self._batch(role, ["link set lo up"])
        seg = self.ns("seg")
        self._batch("seg", [
            "link add br-ext type bridge", "link add br-int type bridge",
            "link set br-ext up", "link set br-int up",
        ])
        self._sysctl("seg", "net.ipv6.conf.all.disable_ipv6=1")
        for node in (1, 2):
            fw = self.ns(f"fw{node}")
            _run(["ip", "link", "add", "ext0", "netns", fw, "type", "veth", "peer", "name", f"fw{node}-ext", "netns", seg])
            _run(["ip", "link", "add", "int0", "netns", fw, "type", "veth", "peer", "name", f"fw{node}-int", "netns", seg])
            self._batch("seg", [
                f"link set fw{node}-ext master br-ext up", f"link set fw{node}-int master br-int up",
            ])
        _run(["ip", "link", "add", "ext0", "netns", self.ns("client"), "type", "veth", "peer", "name", "cl-ext", "netns", seg])
        _run(["ip", "link", "add", "int0", "netns", self.ns("server"), "type", "veth", "peer", "name", "srv-int", "netns", seg])
        self._batch("seg", ["link set cl-ext master br-ext up", "link set srv-int master br-int up"])
        # Distinct interface indexes at the two ends: the kernel's linkwatch treats a
        # veth whose index equals its peer's as a physical port and may hold its
        # carrier change back for up to a second after fw1's own link events, which
        # on two real machines would not share one linkwatch.
        for offset, link in enumerate(("hb0", "hb1")):
            _run(["ip", "link", "add", link, "index", str(4100 + offset), "netns", self.ns("fw1"), "type", "veth",
                  "peer", "name", link, "index", str(4200 + offset), "netns", self.ns("fw2")])
        for node, addrs in NODES.items():
            role = f"fw{node}"
            self._batch(role, [
                f"addr add {addrs.ext}/24 dev ext0", f"addr add {addrs.int_}/24 dev int0",
                f"addr add {addrs.hb0}/30 dev hb0", f"addr add {addrs.hb1}/30 dev hb1",
                "link set ext0 up", "link set int0 up", "link set hb0 up", "link set hb1 up",
                f"route add {SERVER_INT}/32 dev int0",
            ])
            self._sysctl(role, "net.ipv4.ip_forward=1", "net.ipv6.conf.ext0.accept_dad=0",
                         "net.ipv6.conf.hb0.accept_dad=0", "net.ipv6.conf.hb1.accept_dad=0")
        self._batch("client", [
            f"addr add {CLIENT_EXT}/24 dev ext0", "addr add 2001:db8:e::10/64 dev ext0 nodad", "link set ext0 up",
            f"route add {BLOCK_V4} dev ext0", f"route add {BLOCK_V6} dev ext0",
        ])
        self._batch("server", [
            f"addr add {SERVER_INT}/24 dev int0", "link set int0 up", f"route add default via {NODES[1].int_}",
        ])

    def mac(self, role: str, ifname: str) -> str:
        out = _run(["ip", "-n", self.ns(role), "-j", "link", "show", ifname]).stdout
        return json.loads(out)[0]["address"]

    # --- processes ------------------------------------------------------------------

    def spawn(self, role: str, argv: list[str], **popen) -> subprocess.Popen:
        """Start a process in a namespace, in its own process group so close() can end it whole."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(role), *argv], start_new_session=True, **popen)
        self.procs.append(proc)
        return proc

    def start_probe(self, seconds: float, block: str = BLOCK_V4, count: int = 64) -> Probe:
        """1 ms echo requests from the client to `count` addresses spread over `block`."""
        out = self.dir / f"probe-{secrets.token_hex(3)}.json"
        proc = self.spawn("client", [sys.executable, "-m", "agent.labprobe", "--block", block, "--count", str(count),
                                     "--duration", str(seconds), "--out", str(out)],
                          stdout=subprocess.PIPE, text=True)
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the probe did not start")
        return Probe(proc, out)

    def exec(self, role: str, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        return _run(["ip", "netns", "exec", self.ns(role), *argv], check=check)

    def socket_path(self, node: int) -> str:
        return str(self.dir / f"fw{node}.sock")

    def write_config(self, node: int, *, priority: int | None = None, preempt: bool = False,
                     preempt_delay: float = 0.0, advert_interval: float = 0.05,
                     key_hex: str = KEY_HEX, block: str = BLOCK_V4, block_v6: bool = False,
                     announce: str = "", heartbeat: str = "group") -> Path:
        """An agent configuration for fw<node>; `announce` is extra TOML for the block;
        `heartbeat` is "group" (IPv4 multicast), "group6" (IPv6 link-local multicast)
        or "unicast" (the peer's hb addresses)."""
        key = self.dir / f"fw{node}.key"
        key.write_text(f"1 {key_hex}\n")
        key.chmod(0o600)
        v6_block = f"""
[[block]]
name = "ext6"
interface = "ext0"
prefixes = ["{BLOCK_V6}"]
{announce}
""" if block_v6 else ""
        path = self.dir / f"fw{node}.toml"
        path.write_text(f"""\
[node]
id = {node}
priority = {priority if priority is not None else 200 - 50 * node}
preempt = {"true" if preempt else "false"}
preempt_delay = {preempt_delay}
advert_interval = {advert_interval}
dead_multiplier = 3
state_dir = "{self.dir / f"fw{node}-state"}"

[auth]
key_file = "{key}"

[control]
socket = "{self.socket_path(node)}"

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
prefixes = ["{block}"]
{announce}
{v6_block}""")
        return path

    @staticmethod
    def _heartbeat_target(node: int, link: str, kind: str) -> str:
        if kind == "group":
            return f'group = "{HB_GROUP}"'
        if kind == "group6":
            return f'group = "{HB_GROUP_V6}"'
        peer = NODES[3 - node]
        return f'peers = ["{getattr(peer, link)}"]'

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
        batch = subprocess.Popen(["ip", "-n", self.ns(f"fw{node}"), "-batch", "-"], stdin=subprocess.PIPE, text=True)
        at = time.time()
        os.killpg(proc.pid, signal.SIGKILL)
        batch.communicate("link set ext0 down\nlink set hb0 down\nlink set hb1 down\n")
        proc.wait(timeout=10)
        return at

    # --- teardown ---------------------------------------------------------------------

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        for name in reversed(self._created):
            _run(["ip", "netns", "del", name], check=False)
        self._created.clear()
        for path, value in self._neigh_restore.items():
            Path(path).write_text(value)
        self._neigh_restore.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def demo(probe_count: int = 64) -> int:
    """`make run`: two agents hold 198.18.0.0/16, the master dies, the timeline is printed."""
    from agent.cli import render_status
    from agent.labprobe import outage

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    with Lab() as lab:
        print(f"lab {lab.prefix}: client, fw1, fw2, server; block {BLOCK_V4} on-link for the client")
        lab.start_agent(1)
        lab.wait_state(1, "MASTER")
        lab.start_agent(2)
        lab.wait_master_seen(2, 1)
        print("\n== fw1 (agentctl status) ==")
        print(render_status(lab.status(1)))
        probe = lab.start_probe(4.0, count=probe_count)
        print(f"\nprobing {probe_count} addresses across {BLOCK_V4} every 1 ms from the client")
        time.sleep(1.0)
        killed = lab.kill_node(1)
        print("fw1: agent SIGKILLed and its links set down")
        lab.wait_state(2, "MASTER", timeout=5)
        result = probe.finish()
        status = lab.status(2)
        took = status["transitions"][-1]
        fw2_mac = lab.mac("fw2", "ext0")
        gap = outage(result, killed, fw2_mac)
        events = [
            (gap.last_before - killed, "last reply from fw1"),
            (took["at"] - killed, f"fw2 {took['old']} -> {took['new']}: {took['reason']}"),
            (gap.first_after - killed, "first reply from fw2"),
        ]
        for step in took["steps"]:
            events.append((step["started"] - killed, f"step {step['name']:<14} took {step['seconds'] * 1000:.1f} ms"
                           + ("" if step["ok"] else " (FAILED)")))
        print("\n== timeline (t = 0 at the kill; fw1's kernel answers until its links are down) ==")
        for at, what in sorted(events):
            print(f"{_ms(at)}  {what}")
        print(f"\noutage {gap.seconds * 1000:.1f} ms (last reply from fw1 to first from fw2); longest silence "
              f"{gap.worst_gap * 1000:.1f} ms while the announcement crossed the block; {gap.lost} probes lost;"
              " replies after it came from " + ", ".join("fw2" if m == fw2_mac else m for m in gap.macs_after))
        print("\n== fw2 (agentctl status) ==")
        print(render_status(status))
    print(f"\nlab {lab.prefix} removed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.lab", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["demo"])
    parser.add_argument("--probe-count", type=int, default=64)
    args = parser.parse_args(argv)
    try:
        return demo(args.probe_count)
    except KeyboardInterrupt:
        print("interrupted; lab removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
