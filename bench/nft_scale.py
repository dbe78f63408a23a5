"""Benchmark: the nftables gate at scale, dpagent's sets against one rule per address, in one run.

- nft_load_ms: a block of N loose IPv4 addresses loaded as dpagent's gate (its
  prepare: plain sets in table inet dpagent and table arp dpagent, chains, rules,
  one libnftables JSON transaction) against the classic shape, one rule per
  address (`ip daddr X drop`, as CLUSTERIP needed one iptables rule per address),
  also one JSON transaction, for N = 256, 4,096, 65,536.
- nft_prefix_ms: a /16 as one interval element (both tables).
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
- nft_refresh_ms{beside=operator-interval-set}: a refresh while the operator's own
  table holds an interval set of 65,536 ranges, dpagent's nfnetlink messages
  against the same elements added through libnftables (which fetches every
  interval set's elements first): why the leases bypass libnftables.

Every figure is measured in a fresh network namespace, from a thread that lives
in it. Prints `name{labels} value unit` lines; writes bench/results/nft_scale.json.
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import sys
import threading
import time

import nftables
from _report import RESULTS, Figures, write_result

from agent.config import Block
from agent.dataplane.nft import Gate
from agent.netns import Namespaces, enter

PREFIX = ipaddress.ip_network("198.18.0.0/16")
LOOSE_BASE = ipaddress.IPv4Address("198.19.0.0")
LEASE = 0.15


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


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 4096, 65536])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=200, help="lease operations timed")
    parser.add_argument("--quick", action="store_true", help="1 repeat, sizes 256 and 4,096, 50 rounds")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.sizes, args.rounds = 1, [256, 4096], 50
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
    figures.add("nft_prefix_ms", {"prefix": "/16", "addresses": PREFIX.num_addresses}, prefix * 1000, "ms")
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

    write_result(RESULTS / "nft_scale.json", "nft_scale",
                 {"sizes": args.sizes, "repeats": args.repeats, "rounds": args.rounds, "lease_s": LEASE},
                 figures, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
