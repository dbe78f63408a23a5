"""Benchmark: a block announced over BGP through BIRD 2 moves with its holder, upstream.

Lab: agent.labbgp.BgpLab, two nodes, an upstream router and a remote client
behind it, a BIRD in each routing namespace (eBGP with BFD at 20 ms x 3). The
block is 198.18.0.0/16 as one prefix, or as 256 /24 prefixes (256 companion
routes, 256 BGP routes). Cases: node death (fw1's agent SIGKILLed, its links
down and its BIRD killed at once) and a graceful hand-over (`agentctl failover`).

Figures, medians of the repeats:
- bgp_converge_ms: from the failure to the router's kernel routing every prefix
  to fw2 alone, read from an rtnetlink route monitor in the router's namespace;
- bgp_outage_ms{stat=worst|median}: the client probes 16 addresses across the
  block each every 1 ms (agent.labprobe); an address's outage is its longest
  silence from its last reply before the failure until a second after the
  route moved (the replies all come through the router, so silence is what
  tells, not who answered);
- bgp_detect_ms: from the failure to fw2's BACKUP -> MASTER transition, and,
  for a node death, bgp_back_after_takeover_ms: from that transition to the
  last probed address answering again, through fw2 (the dead node answers
  nothing by then). Target: within 20 ms, the traffic follows the takeover. The
  outage may be shorter than the detection: a killed node's kernel answers
  until its links are down, a few ms after the kill. A graceful hand-over is
  detected within ~1 ms, so its outage is the figure to hold against the target.
Heartbeat links "switched" (only the dead interval tells) and "direct" (carrier
loss tells at once, so the router's BFD is what the kill waits for). There is no
classic tool to compare with: ucarp and keepalived do not announce routes.
Prints `name{labels} value unit` lines and writes bench/results/bgp.json.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import select
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Agents and probes run as `python -m agent...` inside the namespaces: make the package importable from any cwd.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE  # noqa: E402
from pyroute2.netlink.rtnl.marshal import MarshalRtnl  # noqa: E402

from _report import RESULTS, Figures, write_result  # noqa: E402

from agent.cli import request  # noqa: E402
from agent.lab import BLOCK_V4, HEARTBEATS  # noqa: E402
from agent.labbgp import BFD_INTERVAL_MS, BFD_MULTIPLIER, BgpLab  # noqa: E402
from agent.labprobe import PROBE_TARGETS  # noqa: E402
from agent.netns import enter  # noqa: E402

CASES = ("kill", "graceful")
PREFIX_COUNTS = (1, 256)
WARMUP_S = 1.0   # the probe runs this long before the failure
SETTLE_S = 1.0   # and this long after the route moved
RTM_NEWROUTE, RTM_DELROUTE = 24, 25


def prefixes(count: int) -> list[str]:
    """The /16 as `count` equal prefixes."""
    return [str(p) for p in ipaddress.ip_network(BLOCK_V4).subnets(new_prefix=16 + (count.bit_length() - 1))]


class RouteWatch:
    """Every change of the router's routes to the block, timestamped as it arrives (a thread
    of its own, its socket opened in the router's namespace)."""

    def __init__(self, netns: str, wanted: list[str]) -> None:
        self.wanted = set(wanted)
        self.events: list[tuple[float, str, frozenset[str]]] = []
        with enter(netns):
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.bind((0, RTMGRP_IPV4_ROUTE))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        marshal = MarshalRtnl()
        while not self._stop.is_set():
            if not select.select([self._sock], [], [], 0.05)[0]:
                continue
            data = self._sock.recv(1 << 20)
            at = time.time()
            for msg in marshal.parse(data):
                kind = msg["header"]["type"]
                if kind not in (RTM_NEWROUTE, RTM_DELROUTE) or msg["table"] != 254:
                    continue
                prefix = f"{msg.get('RTA_DST')}/{msg['dst_len']}"
                if prefix not in self.wanted:
                    continue
                hops = {msg.get("RTA_GATEWAY")} | {h.get("RTA_GATEWAY") for h in msg.get("RTA_MULTIPATH") or ()}
                self.events.append((at, prefix, frozenset() if kind == RTM_DELROUTE else frozenset(hops - {None})))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def moved(self, since: float, to: str) -> float | None:
        """When the last prefix came to be routed to `to` alone (and stayed so), or None."""
        last: dict[str, tuple[float, frozenset[str]]] = {}
        for at, prefix, hops in self.events:
            if at >= since:
                last[prefix] = (at, hops)
        if set(last) != self.wanted or any(hops != {to} for _, hops in last.values()):
            return None
        return max(at for at, _ in last.values())


def replies_by_address(result: dict) -> list[list[float]]:
    """Each probed address's reply times, sorted."""
    index_of = {seq: index for seq, _, index in result["sent"]}
    times: list[list[float]] = [[] for _ in result["targets"]]
    for seq, at, _mac in result["replies"]:
        if seq in index_of:
            times[index_of[seq]].append(at)
    return [sorted(t) for t in times]


def silences(result: dict, fail_at: float, until: float) -> list[tuple[float, bool]]:
    """Per probed address: its longest silence from its last reply before the failure to
    `until`, and whether it answered again (else the silence is a lower bound)."""
    found = []
    for stream in replies_by_address(result):
        start = max((t for t in stream if t <= fail_at), default=fail_at)
        after = [t for t in stream if start < t <= until]
        points = [start, *after] if after else [start, until]
        found.append((max(b - a for a, b in zip(points, points[1:])), bool(after)))
    return found


def back_after(result: dict, at: float) -> float | None:
    """When the last probed address first answered after `at`, or None if one never did."""
    firsts = [next((t for t in stream if t > at), None) for stream in replies_by_address(result)]
    return None if None in firsts else max(firsts)


def one_run(heartbeat: str, case: str, count: int, timeout: float) -> dict:
    nets = prefixes(count)
    with BgpLab(heartbeat=heartbeat) as lab:
        lab.start_all_birds()
        lab.start_agent(1, lab.write_config(1, block=nets))
        lab.wait_state(1, "MASTER", timeout=timeout)
        lab.start_agent(2, lab.write_config(2, block=nets))
        lab.wait_master_seen(2, 1, timeout=timeout)
        fw1, fw2 = lab.addresses[1].ext, lab.addresses[2].ext
        deadline = time.monotonic() + timeout
        while lab.routes_via(nets) != {n: {fw1} for n in nets}:
            if time.monotonic() > deadline:
                raise TimeoutError("the router never routed every prefix to fw1")
            time.sleep(0.05)
        watch = RouteWatch(lab.ns("router"), nets)
        try:
            probe = lab.start_probe(WARMUP_S + timeout + SETTLE_S, count=PROBE_TARGETS, realtime=True,
                                    role="remote", ifname="up0")
            time.sleep(WARMUP_S)
            if case == "kill":
                fail_at = lab.kill_node(1)
                lab.kill_bird("fw1")
            else:
                fail_at = time.time()
                request(lab.socket_path(1), "failover")
            deadline = time.monotonic() + timeout
            while (moved := watch.moved(fail_at, fw2)) is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(SETTLE_S)
            result = probe.finish(stop=True)
        finally:
            watch.close()
        status = lab.status(2) or {}
        # fw2's takeover: its first transition to MASTER after the failure (later ones may follow).
        took = next((t for t in status.get("transitions", []) if t["new"] == "MASTER" and t["old"] != "MASTER"
                     and t["at"] >= fail_at - 0.01), {})
        detect = (took["at"] - fail_at) * 1000 if took else None
        until = (moved or time.time()) + SETTLE_S
        outages = silences(result, fail_at, until)
        values = [s for s, _ in outages]
        last_back = back_after(result, took["at"]) if case == "kill" and detect is not None else None
        return {
            "converge_ms": (moved - fail_at) * 1000 if moved else None,
            "outage_worst_ms": max(values) * 1000, "outage_median_ms": statistics.median(values) * 1000,
            "unanswered_targets": sum(not answered for _, answered in outages),
            "detect_ms": detect,
            "back_after_takeover_ms": (last_back - took["at"]) * 1000 if last_back is not None else None,
            "steps_ms": {s["name"]: {"start": (s["started"] - fail_at) * 1000, "took": s["seconds"] * 1000}
                         for s in took.get("steps", [])},
            "fw2_transitions": [{"ms": (t["at"] - fail_at) * 1000, "old": t["old"], "new": t["new"],
                                 "reason": t["reason"]} for t in status.get("transitions", [])][-6:],
            "route_events": [((at - fail_at) * 1000, prefix, sorted(hops)) for at, prefix, hops in watch.events][:600],
            # The router's BIRD on its sessions (state changes, BFD), should a run need explaining.
            "router_log": (lab.dir / "router-bird.log").read_text().splitlines()[-40:],
        }


def median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, switched heartbeat, the /16 only")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--heartbeats", nargs="+", default=list(HEARTBEATS), choices=HEARTBEATS)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--prefixes", type=int, nargs="+", default=list(PREFIX_COUNTS), choices=PREFIX_COUNTS)
    parser.add_argument("--timeout", type=float, default=60.0, help="per-run bound on set-up and recovery, s")
    parser.add_argument("--output", type=Path, default=RESULTS / "bgp.json")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.heartbeats, args.prefixes = 1, ["switched"], [1]
    figures = Figures()
    raw: dict = {}
    for heartbeat in args.heartbeats:
        for count in args.prefixes:
            for case in args.cases:
                runs = []
                for repeat in range(args.repeats):
                    try:
                        runs.append(one_run(heartbeat, case, count, args.timeout))
                    except (TimeoutError, RuntimeError) as exc:
                        runs.append({"error": str(exc)})
                    print(f"# {heartbeat} {case} prefixes={count} run {repeat + 1}: "
                          f"{ {k: v for k, v in runs[-1].items() if k.endswith('_ms') and k != 'steps_ms'} }",
                          flush=True)
                raw[f"{heartbeat}/{case}/{count}"] = runs
                labels = {"case": case, "prefixes": count, "heartbeat": heartbeat}
                measured = [r for r in runs if r.get("converge_ms") is not None]
                if not measured:
                    continue
                figures.add("bgp_converge_ms", labels, median(measured, "converge_ms"), "ms")
                figures.add("bgp_outage_ms", {**labels, "stat": "worst"}, median(measured, "outage_worst_ms"), "ms")
                figures.add("bgp_outage_ms", {**labels, "stat": "median"}, median(measured, "outage_median_ms"), "ms")
                for key in ("detect_ms", "back_after_takeover_ms"):
                    value = median(measured, key)
                    if value is not None:
                        figures.add(f"bgp_{key}", labels, value, "ms")
                figures.add("bgp_failed_runs", labels, len(runs) - len(measured), "runs")
    settings = {"repeats": args.repeats, "heartbeats": args.heartbeats, "cases": args.cases,
                "prefixes": args.prefixes, "probe_targets": PROBE_TARGETS, "advert_interval_s": 0.05,
                "dead_multiplier": 3, "bfd": f"{BFD_INTERVAL_MS} ms x {BFD_MULTIPLIER}", "quick": args.quick}
    write_result(args.output, "bgp", settings, figures, raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
