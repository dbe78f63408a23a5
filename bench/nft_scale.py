"""Benchmark: the nftables gate at scale, dpagent's sets against one rule per address, in one run.

- nft_load_ms: a block of N loose IPv4 addresses loaded as dpagent's gate (its
  prepare: plain sets in table inet dpagent and table arp dpagent, chains, rules,
  one libnftables JSON transaction) against the classic shape, one rule per
  address (`ip daddr X drop`, as CLUSTERIP needed one iptables rule per address),
  also one JSON transaction, for N = 256, 4,096, 65,536.
- nft_prefix_ms: a block of one /16 loaded (its whole gate, both tables), and a /16
  interval element added to or deleted from a loaded block (a reload's delta).
- nft_prepare_ms: a /16 plus 4,096 loose addresses, the shape of a typical block.
- nft_take_ms / nft_refresh_ms / nft_release_ms: the lease operations (text
  commands: JSON cannot carry sub-second timeouts), median and 99th percentile of
  many, with that block loaded; refresh also for 16 blocks in one transaction and
  with a 65,536-address block loaded, to show the set size does not matter.
- nft_refresh_during_bulk_ms: refreshes every millisecond from a thread of their
  own (the daemon's event loop) while another thread adjusts a held block by
  65,536 addresses out and 65,536 in: bulk work is cut into transactions of
  8,192 elements so the kernel's nftables mutex is never held long; what is left
  is mostly Python's GIL (the switch interval is a label).
- nft_flip_ms: a full ownership flip of a cluster-mac block's buckets (all owned, then
  none; 256 and 1,024 buckets), each one nfnetlink transaction, as a takeover makes it.
- nft_refresh_ms{beside=operator-interval-set}: a refresh while the operator's own
  table holds an interval set of 65,536 ranges, dpagent's nfnetlink messages
  against the same elements added through libnftables (which fetches every
  interval set's elements first): why the leases bypass libnftables.
- nft_filter_pps: packets per second through a netdev ingress filter (`type
  filter hook ingress device rx0 priority -500`) holding the 65,536 addresses
  198.19.0.0-198.19.255.255, as ONE rule matching a plain set of them (`ip daddr
  @addr4 counter drop`, dpagent's set shape) against 65,536 rules, one per
  address in ascending order (`ip daddr X counter drop`, the CLUSTERIP /
  per-address pattern; nft adds `meta protocol ip` to each in netdev). Two
  namespaces joined by a veth pair; bench/pktgen.c (built here with `cc -O2`)
  sends 60-byte UDP frames from the generator's end through AF_PACKET +
  sendmmsg (qdisc bypassed), pinned to one CPU, with destinations drawn
  uniformly at random over the 65,536 (a fixed seed, the same frames for both):
  the per-address chain walks half its rules per packet on average, not the
  worst case. RPS steers the receiving end's packets to the other CPU, so the
  filter has a CPU of its own. The figure is the increase of the filter's
  counters (every frame matches one rule; read by one nfnetlink rule dump) per
  second over a fixed window after a warm-up. The same generator, frames and
  window serve both shapes; then nft_filter_ratio. A slow filter throttles the
  generator (its frames hold its socket's send buffer until the filter frees
  them), so both rates agree; what tells who set the pace is the filter CPU's
  softirq share over the window (in `runs` with the generator's rate): under
  90%, the filter had time to spare, the generator was the limit and the
  figure prints as a lower bound (`>=`).

Every figure is measured in a fresh network namespace, from a thread that lives
in it. Prints `name{labels} value unit` lines; writes bench/results/nft_scale.json.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nftables
from _report import RESULTS, Figures, write_result

from agent.config import Block, L2Config
from agent.core import clusterset, ruleset
from agent.dataplane.cluster import ClusterFilter
from agent.dataplane.nft import Gate
from agent.netns import Namespaces, batch, enter, ip, run_in

PREFIX = ipaddress.ip_network("198.18.0.0/16")
LOOSE_BASE = ipaddress.IPv4Address("198.19.0.0")
LEASE = 0.15
PKTGEN = Path(__file__).resolve().parent / "pktgen.c"
SENDER = ("02:00:5e:c6:12:01", "198.18.0.1")  # the generator's end of the veth: MAC, source address
RECEIVER_MAC = "02:00:5e:c6:12:02"
FILTER_TABLE = "bench"


def in_netns(netns: str, work):
    """What `work()` returns, run in a thread that lives in `netns`."""
    out: list = []

    def run() -> None:
        with enter(netns):
            out.append(work())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if not out:
        raise RuntimeError("the measurement failed; see the traceback above")
    return out[0]


def loose(count: int, base: ipaddress.IPv4Address = LOOSE_BASE) -> tuple[ipaddress.IPv4Address, ...]:
    return tuple(base + i for i in range(count))


def dpagent_load(blocks: list[Block]) -> float:
    """Seconds of the gate's first prepare of these blocks."""
    gate = Gate(LEASE)
    started = time.perf_counter()
    problems = gate.prepare(blocks)
    seconds = time.perf_counter() - started
    if problems:
        raise RuntimeError(f"prepare failed: {problems}")
    return seconds


def per_address_rules(count: int) -> float:
    """Seconds to load one `ip daddr X drop` rule per address in one transaction."""
    table = {"family": "inet", "name": "classic"}
    chain = {**{"family": "inet", "table": "classic", "name": "prerouting"},
             "type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"}
    rules = [{"add": {"rule": {"family": "inet", "table": "classic", "chain": "prerouting", "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": str(a)}},
        {"drop": None}]}}} for a in loose(count)]
    document = {"nftables": [{"add": {"table": table}}, {"add": {"chain": chain}}, *rules]}
    nft = nftables.Nftables()
    started = time.perf_counter()
    rc, _output, error = nft.json_cmd(document)
    seconds = time.perf_counter() - started
    if rc:
        raise RuntimeError(error)
    return seconds


def lease_operations(blocks: list[Block], rounds: int) -> dict[str, list[float]]:
    """Seconds of each take, refresh (of the first block, and of all) and release."""
    gate = Gate(LEASE)
    if gate.prepare(blocks):
        raise RuntimeError("prepare failed")
    times: dict[str, list[float]] = {"take": [], "refresh": [], "refresh_all": [], "release": []}
    first = blocks[0]
    for _ in range(rounds):
        for name, op in (("take", lambda: [gate.take(b) for b in blocks][0]),
                         ("refresh", lambda: gate.refresh([first])),
                         ("refresh_all", lambda: gate.refresh(blocks)),
                         ("release", lambda: [gate.release(b) for b in blocks][0])):
            result = op()
            if not result.ok:
                raise RuntimeError(f"{name}: {result.problem}")
            times[name].append(result.seconds)
    return times


def prefix_elements(rounds: int) -> list[float]:
    """Seconds of adding a /16 to a loaded block and taking it out again (a reload's
    delta: one interval element in each table, one libnftables transaction)."""
    small = Block("bench", "b0", (ipaddress.ip_network("203.0.113.0/24"),), ())
    grown = Block("bench", "b0", (ipaddress.ip_network("203.0.113.0/24"), PREFIX), ())
    gate = Gate(LEASE)
    if gate.prepare([small]):
        raise RuntimeError("prepare failed")
    times = []
    for _ in range(rounds):
        for old, new in ((small, grown), (grown, small)):
            result = gate.adjust(old, new)
            if not result.ok:
                raise RuntimeError(f"adjust: {result.problem}")
            times.append(result.seconds)
    return times


def ownership_flips(buckets: int, rounds: int) -> list[float]:
    """Seconds of each full ownership flip of a cluster-mac block (every bucket owned, then
    none, as a takeover and a release do), one nfnetlink transaction each."""
    block = Block("bench", "b0", (PREFIX,), (), l2=L2Config(mode="cluster-mac", buckets=buckets))
    cluster = ClusterFilter()
    if cluster.prepare([block]):
        raise RuntimeError(f"prepare failed: {cluster.problems}")
    times = []
    for _ in range(rounds):
        for owned in (list(range(buckets)), []):
            result = cluster.own(block, owned)
            if not result.ok:
                raise RuntimeError(f"flip: {result.problem}")
            times.append(result.seconds)
    if cluster.kernel_owned(block) != []:
        raise RuntimeError("the last flip left buckets owned")
    return times


def beside_operator_set(block: Block, ranges: int, rounds: int) -> dict[str, list[float]]:
    """Seconds of a refresh through dpagent and through libnftables text, while another
    table holds an interval set of `ranges` ranges."""
    nft = nftables.Nftables()
    start = int(ipaddress.IPv4Address("10.0.0.0"))
    ranges_json = [{"range": [str(ipaddress.IPv4Address(start + 4 * i)), str(ipaddress.IPv4Address(start + 4 * i + 1))]}
                   for i in range(ranges)]
    rc, _output, error = nft.json_cmd({"nftables": [
        {"add": {"table": {"family": "ip", "name": "operator"}}},
        {"add": {"set": {"family": "ip", "table": "operator", "name": "blocklist", "type": "ipv4_addr",
                         "flags": ["interval"], "elem": ranges_json}}}]})
    if rc:
        raise RuntimeError(error)
    gate = Gate(LEASE)
    if gate.prepare([block]) or not gate.take(block).ok:
        raise RuntimeError("prepare or take failed")
    ms = round(LEASE * 1000)
    text = "\n".join(f"add element {family} dpagent lease.{block.name} {{ {', '.join(f'{k} timeout {ms}ms expires {ms}ms' for k in keys)} }}"
                     for family, keys in (("inet", ("ipv4", "ipv6")), ("arp", ("arp",))))
    times: dict[str, list[float]] = {"dpagent-netlink": [], "libnftables": []}
    for _ in range(rounds):
        times["dpagent-netlink"].append(gate.refresh([block]).seconds)
        started = time.perf_counter()
        rc, _output, error = nft.cmd(text)
        times["libnftables"].append(time.perf_counter() - started)
        if rc:
            raise RuntimeError(error)
    return times


def refresh_during_bulk(held: Block, count: int) -> list[float]:
    """Seconds of each refresh of `held`, made every millisecond from another thread while
    a held block of `count` loose addresses is replaced by `count` others."""
    gate = Gate(LEASE)
    before = Block("bulk", "b0", (), loose(count, ipaddress.IPv4Address("198.20.0.0")))
    after = Block("bulk", "b0", (), loose(count, ipaddress.IPv4Address("198.20.0.0") + count))
    if gate.prepare([held, before]) or not gate.take(before).ok:
        raise RuntimeError("prepare or take failed")
    seconds: list[float] = []
    done = threading.Event()

    def refresher() -> None:
        if not gate.take(held).ok:
            raise RuntimeError("take failed")
        while not done.is_set():
            seconds.append(gate.refresh([held]).seconds)
            time.sleep(0.001)

    thread = threading.Thread(target=refresher)
    thread.start()
    try:
        result = gate.adjust(before, after)
    finally:
        done.set()
        thread.join()
    if not result.ok:
        raise RuntimeError(result.problem)
    return seconds


def build_pktgen(directory: str) -> str:
    """bench/pktgen.c compiled with `cc -O2` into `directory`; its path."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("nft_filter_pps needs a C compiler (cc): apt-get install gcc")
    binary = os.path.join(directory, "pktgen")
    done = subprocess.run([cc, "-O2", "-Wall", "-o", binary, str(PKTGEN)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"building {PKTGEN.name}: {done.stderr.strip()}")
    return binary


def filter_document(shape: str, count: int, device: str) -> dict:
    """A netdev ingress filter on `device` dropping, with a counter, packets to the `count`
    loose addresses: one rule and a plain set (`dpagent-set`) or one rule per address."""
    table = {"family": "netdev", "name": FILTER_TABLE}
    chain = {"family": "netdev", "table": FILTER_TABLE, "name": "ingress", "type": "filter", "hook": "ingress",
             "dev": device, "prio": -500, "policy": "accept"}
    daddr = {"payload": {"protocol": "ip", "field": "daddr"}}
    commands: list[dict] = [{"add": {"table": table}}, {"add": {"chain": chain}}]
    addresses = [str(a) for a in loose(count)]
    if shape == "dpagent-set":
        # As the gate holds loose addresses: a plain ipv4_addr set, then its elements.
        commands += [
            {"add": {"set": {"family": "netdev", "table": FILTER_TABLE, "name": "addr4", "type": "ipv4_addr"}}},
            {"add": {"element": {"family": "netdev", "table": FILTER_TABLE, "name": "addr4", "elem": addresses}}},
            {"add": {"rule": {"family": "netdev", "table": FILTER_TABLE, "chain": "ingress", "expr": [
                {"match": {"op": "==", "left": daddr, "right": "@addr4"}}, {"counter": None}, {"drop": None}]}}}]
    elif shape == "per-address-rules":
        commands += [{"add": {"rule": {"family": "netdev", "table": FILTER_TABLE, "chain": "ingress", "expr": [
            {"match": {"op": "==", "left": daddr, "right": a}}, {"counter": None}, {"drop": None}]}}}
            for a in addresses]
    else:
        raise ValueError(shape)
    return {"nftables": commands}


def load_filter(shape: str, count: int, device: str) -> int:
    """Load the filter in this thread's namespace; the number of rules in its chain."""
    rc, _output, error = nftables.Nftables().json_cmd(filter_document(shape, count, device))
    if rc:
        raise RuntimeError(error)
    return filter_packets()[1]


NFTA_RULE_EXPRESSIONS, NFTA_EXPR_NAME, NFTA_EXPR_DATA, NFTA_COUNTER_PACKETS = 4, 1, 2, 2
COUNTER_NAME = ruleset.nla(NFTA_EXPR_NAME, b"counter\0")  # an expression's name attribute, "counter"


def rule_dump(table: str) -> list[bytes]:
    """The attributes of every rule of netdev table `table`, one nfnetlink dump (its own
    socket: a dump of 65,536 rules outlasts the gate's reply timeout)."""
    request = ruleset.nfnl_message(ruleset.NFNL_SUBSYS_NFTABLES << 8 | ruleset.NFT_MSG_GETRULE, ruleset.NLM_F_DUMP,
                                   1, clusterset.NFPROTO_NETDEV, ruleset.nla_string(ruleset.NFTA_RULE_TABLE, table))
    rules: list[bytes] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ruleset.NETLINK_NETFILTER) as sock:
        sock.settimeout(30)
        sock.send(request)
        while True:
            for reply in ruleset.replies(sock.recv(1 << 20)):
                if reply.kind == ruleset.NLMSG_DONE:
                    return rules
                if reply.kind == ruleset.NLMSG_ERROR:
                    raise RuntimeError(f"rule dump: {os.strerror(-reply.error)}")
                rules.append(reply.attrs)


def filter_packets() -> tuple[int, int]:
    """Packets counted by the filter's rules in this thread's namespace, summed, and how many
    rules: one nfnetlink dump of the table's rules (libnftables would also fetch the set's
    65,536 elements, for seconds of CPU in the middle of the measurement)."""
    packets = rules = 0
    for rule in rule_dump(FILTER_TABLE):
        expressions = next(v for k, v in ruleset.nla_parse(rule) if k == NFTA_RULE_EXPRESSIONS)
        # Each expression is a list element holding its name, then its data: find the
        # counter's name; the attribute after it is its data.
        at = expressions.find(COUNTER_NAME)
        if at < 0:
            continue
        kind, data = ruleset.nla_parse(expressions[at + len(COUNTER_NAME):])[0]
        if kind != NFTA_EXPR_DATA:
            raise RuntimeError("rule dump: a counter without data")
        packets += struct.unpack("!Q", dict(ruleset.nla_parse(data))[NFTA_COUNTER_PACKETS])[0]
        rules += 1
    return packets, rules


def cpu_ticks() -> dict[int, list[int]]:
    """Per CPU, /proc/stat's tick counters (user nice system idle iowait irq softirq steal)."""
    ticks = {}
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith("cpu") and line[3].isdigit():
                fields = line.split()
                ticks[int(fields[0][3:])] = [int(v) for v in fields[1:9]]
    return ticks


def cpu_shares(before: dict[int, list[int]], after: dict[int, list[int]], cpu: int | None) -> dict[str, float]:
    """Fractions of the CPU's unstolen ticks between two samples: busy (not idle) and softirq."""
    if cpu is None:
        return {}
    user, nice, system, idle, iowait, irq, softirq, steal = (b - a for a, b in zip(before[cpu], after[cpu]))
    total = max(1, user + nice + system + idle + iowait + irq + softirq)
    return {"busy": (total - idle - iowait) / total, "softirq": softirq / total, "steal_ticks": steal}


def filter_pps(binary: str, shape: str, count: int, warmup: float, window: float) -> dict:
    """One run of nft_filter_pps in namespaces of its own: the filter's counted packets per
    second over `window` seconds after `warmup`, and the generator's own send rate."""
    cpus = sorted(os.sched_getaffinity(0))
    sender_cpu, filter_cpu = (cpus[0], cpus[1]) if len(cpus) > 1 else (cpus[0], None)
    with Namespaces("dpnft") as spaces:
        gen, sink = spaces.new("gen"), spaces.new("sink")
        spaces.veth(gen, "tx0", sink, "rx0", up=False)
        ip("link", "set", "tx0", "address", SENDER[0], "up", netns=gen)
        ip("link", "set", "rx0", "address", RECEIVER_MAC, "up", netns=sink)
        if filter_cpu is not None:
            # `ip netns exec` mounts the namespace's own /sys, where rx0 is.
            run_in(sink, ["sh", "-c", f"echo {1 << filter_cpu:x} > /sys/class/net/rx0/queues/rx-0/rps_cpus"])
        started = time.perf_counter()
        rules = in_netns(sink, lambda: load_filter(shape, count, "rx0"))
        load_s = time.perf_counter() - started
        cap = warmup + window + 120  # the generator's own stop, should this process die
        proc = spaces.spawn(gen, [binary, "tx0", SENDER[0], RECEIVER_MAC, SENDER[1], str(LOOSE_BASE), str(count),
                                  str(cap), str(sender_cpu)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
        try:
            time.sleep(warmup)

            def read() -> tuple[float, int, float]:
                # On the generator's CPU, away from the filter's. The dump reads each rule's
                # counter at about the same offset from its start both times, so the
                # window runs from one start to the other.
                os.sched_setaffinity(0, {sender_cpu})  # this thread only
                at = time.monotonic()
                packets, _rules = filter_packets()
                return at, packets, time.monotonic() - at

            ticks0 = cpu_ticks()
            t0, c0, read0 = in_netns(sink, read)
            time.sleep(max(0.0, window - read0))
            t1, c1, read1 = in_netns(sink, read)
            ticks1 = cpu_ticks()
            if proc.poll() is not None:
                raise RuntimeError(f"pktgen ended early: {proc.stderr.read().strip()}")
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                spaces.kill(proc)
        match = re.search(r"sent (\d+) seconds ([\d.]+) errors (\d+)", out)
        if proc.returncode or not match:
            raise RuntimeError(f"pktgen failed ({proc.returncode}): {err.strip()} {out.strip()}")
        sent, sent_s, errors = int(match[1]), float(match[2]), int(match[3])
    return {"pps": (c1 - c0) / (t1 - t0), "window_s": t1 - t0, "counted": c1 - c0, "rules": rules,
            "load_s": load_s, "read_s": [read0, read1], "sent_pps": sent / sent_s, "send_errors": errors,
            "sender_cpu": sender_cpu, "filter_cpu": filter_cpu,
            "sender_cpu_share": cpu_shares(ticks0, ticks1, sender_cpu),
            "filter_cpu_share": cpu_shares(ticks0, ticks1, filter_cpu)}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 4096, 65536])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=200, help="lease operations timed")
    parser.add_argument("--filter-n", type=int, default=65536, help="addresses in nft_filter_pps's filter")
    parser.add_argument("--window", type=float, default=3.0, help="seconds each nft_filter_pps run counts")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of traffic before counting")
    parser.add_argument("--quick", action="store_true",
                        help="1 repeat, sizes 256 and 4,096, 50 rounds, a 2 s filter window")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.sizes, args.rounds, args.window = 1, [256, 4096], 50, 2.0
    figures = Figures()
    runs: dict[str, object] = {}

    def measure(key: str, work) -> float:
        values = []
        for _ in range(args.repeats):
            with Namespaces("dpnft") as spaces:
                values.append(in_netns(spaces.new("nft"), work))
        runs[key] = values
        return statistics.median(values)

    for n in args.sizes:
        ours = measure(f"dpagent-set/{n}", lambda: dpagent_load([Block("bench", "b0", (), loose(n))]))
        figures.add("nft_load_ms", {"system": "dpagent-set", "n": n}, ours * 1000, "ms")
        theirs = measure(f"per-address-rules/{n}", lambda: per_address_rules(n))
        figures.add("nft_load_ms", {"system": "per-address-rules", "n": n}, theirs * 1000, "ms")
        figures.add("nft_load_ratio", {"vs": "per-address-rules", "n": n}, theirs / ours, "x")

    prefix = measure("prefix", lambda: dpagent_load([Block("bench", "b0", (PREFIX,), ())]))
    figures.add("nft_prefix_ms", {"prefix": "/16", "op": "block-load", "addresses": PREFIX.num_addresses}, prefix * 1000, "ms")
    with Namespaces("dpnft") as spaces:
        element = in_netns(spaces.new("nft"), lambda: prefix_elements(max(10, args.rounds // 4)))
    runs["prefix-element"] = element
    figures.add("nft_prefix_ms", {"prefix": "/16", "op": "element-add-or-delete", "stat": "median"},
                statistics.median(element) * 1000, "ms")
    typical = Block("bench", "b0", (PREFIX,), loose(4096))
    prepare = measure("prepare", lambda: dpagent_load([typical]))
    figures.add("nft_prepare_ms", {"prefix": "/16", "loose": 4096}, prepare * 1000, "ms")

    many = [typical] + [Block(f"b{i}", "b0", (ipaddress.ip_network(f"203.0.{i}.0/24"),), ()) for i in range(1, 16)]
    big = Block("big", "b0", (PREFIX,), loose(65536))
    with Namespaces("dpnft") as spaces:
        lease_runs = in_netns(spaces.new("nft"), lambda: lease_operations(many, args.rounds))
    with Namespaces("dpnft") as spaces:
        big_runs = in_netns(spaces.new("nft"), lambda: lease_operations([big], args.rounds))
    with Namespaces("dpnft") as spaces:
        beside = in_netns(spaces.new("nft"), lambda: beside_operator_set(typical, 65536, max(5, args.rounds // 20)))
    with Namespaces("dpnft") as spaces:
        during = in_netns(spaces.new("nft"), lambda: refresh_during_bulk(typical, 65536 if not args.quick else 8192))
    flips = {}
    for buckets in (256, 1024):
        with Namespaces("dpnft") as spaces:
            netns = spaces.new("nft")
            # The cluster MAC goes into the filter of the block's interface: it must exist.
            batch(netns, ["link add b0 type veth peer name b1"])
            flips[buckets] = in_netns(netns, lambda: ownership_flips(buckets, args.rounds))
        figures.add("nft_flip_ms", {"buckets": buckets, "stat": "median"}, statistics.median(flips[buckets]) * 1000,
                    "ms")
        figures.add("nft_flip_ms", {"buckets": buckets, "stat": "p99"}, percentile(flips[buckets], 0.99) * 1000, "ms")
    runs["flips"] = {str(k): v for k, v in flips.items()}
    runs["refresh-during-bulk"] = during
    runs["lease"] = lease_runs
    runs["lease-65536"] = big_runs
    runs["beside-operator-set"] = beside
    for name, labels, values in (
            ("nft_take_ms", {"loaded": "/16+4096"}, lease_runs["take"]),
            ("nft_refresh_ms", {"blocks": 1, "loaded": "/16+4096"}, lease_runs["refresh"]),
            ("nft_refresh_ms", {"blocks": 16, "loaded": "/16+4096,15x/24"}, lease_runs["refresh_all"]),
            ("nft_refresh_ms", {"blocks": 1, "loaded": "/16+65536"}, big_runs["refresh"]),
            ("nft_release_ms", {"loaded": "/16+4096"}, lease_runs["release"])):
        figures.add(name, {**labels, "stat": "median"}, statistics.median(values) * 1000, "ms")
        figures.add(name, {**labels, "stat": "p99"}, percentile(values, 0.99) * 1000, "ms")
    labels = {"bulk": "65536-out-65536-in" if not args.quick else "8192-out-8192-in",
              "switch_interval_ms": sys.getswitchinterval() * 1000}
    figures.add("nft_refresh_during_bulk_ms", {**labels, "stat": "median"}, statistics.median(during) * 1000, "ms")
    figures.add("nft_refresh_during_bulk_ms", {**labels, "stat": "max"}, max(during) * 1000, "ms")
    for via, values in beside.items():
        figures.add("nft_refresh_ms", {"blocks": 1, "beside": "operator-interval-set-65536", "via": via,
                                       "stat": "median"}, statistics.median(values) * 1000, "ms")
    figures.add("nft_refresh_ratio", {"vs": "libnftables", "beside": "operator-interval-set-65536"},
                statistics.median(beside["libnftables"]) / statistics.median(beside["dpagent-netlink"]), "x")

    n = args.filter_n
    with tempfile.TemporaryDirectory(prefix="dpnft-pktgen-") as build:
        binary = build_pktgen(build)
        filter_runs: dict[str, list[dict]] = {"dpagent-set": [], "per-address-rules": []}
        for _ in range(args.repeats):
            for shape in filter_runs:
                filter_runs[shape].append(filter_pps(binary, shape, n, args.warmup, args.window))
    runs["filter"] = filter_runs
    pps = {shape: statistics.median(r["pps"] for r in done) for shape, done in filter_runs.items()}
    # Where the filter's CPU (its softirq) was not saturated, the generator set the pace and
    # the figure is only a lower bound of what the filter passes.
    limited = {shape: len(os.sched_getaffinity(0)) > 1 and statistics.median(
        r["filter_cpu_share"]["softirq"] for r in done) < 0.9 for shape, done in filter_runs.items()}
    for shape, value in pps.items():
        figures.add("nft_filter_pps", {"system": shape, "n": n}, value, "pps", lower_bound=limited[shape])
    figures.add("nft_filter_ratio", {"vs": "per-address-rules", "n": n},
                pps["dpagent-set"] / pps["per-address-rules"], "x",
                lower_bound=limited["dpagent-set"] and not limited["per-address-rules"])

    write_result(RESULTS / "nft_scale.json", "nft_scale",
                 {"sizes": args.sizes, "repeats": args.repeats, "rounds": args.rounds, "lease_s": LEASE,
                  "filter": {"n": n, "window_s": args.window, "warmup_s": args.warmup,
                             "destinations": "uniform random over the block, fixed seed", "frame_bytes": 60,
                             "generator": "bench/pktgen.c: AF_PACKET sendmmsg, qdisc bypass, one pinned CPU",
                             "receive": "veth, RPS to another CPU, netdev ingress priority -500"}},
                 figures, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
