"""Benchmark: active/active, a node's death re-owned and resumed at N = 2, 3, 4; requests served by 1, 2, 3 nodes.

- active_reown_ms{nodes=N}: N agents share one cluster-mac block (256 buckets,
  the XDP backend, heartbeat through a switch, adverts every 50 ms); the last
  node is SIGKILLed with its links taken down. The figure is the time from the
  kill to the end of the survivors' last `own-buckets` step that completed the
  set (their transition histories, wall clock).
- active_resume_ms{nodes=N}: meanwhile 256 client sources ping a block address
  every 5 ms (agent.labflows ping); for each source whose bucket the dead node
  owned, the time from the kill to its first reply from a survivor. The worst
  source is the figure (the median is in `runs`).
- active_requests_per_s{nodes=N}: TCP requests (connect, the node's name back,
  close), one after another round 256 sources, for a fixed time, with 1, 2 and
  3 nodes serving the block. Every namespace shares the machine's CPUs with the
  one-threaded generator, so this line shows what bounds it, not a cluster's
  capacity: see the note it prints.

Medians of the runs. Prints `name{labels} value unit` lines; writes
bench/results/active.json.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

from _report import RESULTS, Figures, write_result  # noqa: E402

from agent.core.buckets import HashFields, bucket  # noqa: E402
from agent.lab import Lab  # noqa: E402

VIP = "198.18.0.77"
SOURCES = [str(ipaddress.ip_address("198.19.0.10") + i) for i in range(256)]
SOURCE_ROUTE = "198.19.0.0/22"
BUCKETS, SEED = 256, 0x5EED
PORT = 8080
def shared(lab: Lab, node: int) -> dict:
    status = lab.status(node) or {}
    return status.get("node", {}).get("shared", {}).get("blocks", {}).get("ext", {})


def owned(lab: Lab, node: int) -> set[int]:
    return set(shared(lab, node).get("applied", []))


def wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g} s")
        time.sleep(0.02)
    return value


def split(lab: Lab, nodes: list[int]) -> bool:
    shares = [owned(lab, n) for n in nodes]
    return sum(map(len, shares)) == len(set().union(*shares)) == BUCKETS and all(shares)


def start(lab: Lab, nodes: list[int]) -> None:
    lab.add_client_sources(SOURCES, route=SOURCE_ROUTE)
    for node in nodes:
        lab.start_agent(node, lab.write_config(node, l2="cluster-mac", backend="xdp", shared=True))
        lab.serve(node, PORT)
    wait(lambda: split(lab, nodes), 30, "the buckets split")
    lab.resolve([VIP])


def death(nodes: int) -> dict:
    """One run: the last of `nodes` dies; re-own and resume times, ms."""
    with Lab(heartbeat="switched", nodes=nodes) as lab:
        members = list(range(1, nodes + 1))
        start(lab, members)
        victim, survivors = members[-1], members[:-1]
        lost = owned(lab, victim)
        moved = [s for s in SOURCES
                 if bucket(HashFields.SOURCE, ipaddress.ip_address(s), None, None, BUCKETS, SEED) in lost]
        ping = lab.spawn("client", [sys.executable, "-m", "agent.labflows", "ping", VIP, "4", "0.005", *SOURCES],
                         stdout=subprocess.PIPE, text=True)
        if ping.stdout.readline().strip() != "ready":
            raise RuntimeError("the ping did not start")
        time.sleep(1.0)
        killed = lab.kill_node(victim)
        wait(lambda: split(lab, survivors), 30, "the survivors owning every bucket")
        result = json.loads(ping.communicate(timeout=60)[0])
        ends = [step["started"] + step["seconds"] for n in survivors for t in lab.status(n)["transitions"]
                for step in t["steps"] if step["name"] == "own-buckets:ext" and step["started"] >= killed]
        dead_macs = {lab.mac(f"fw{victim}", "ext0")}
        first: dict[str, float] = {}
        for src, _seq, mac, at in result["replies"]:
            if src in moved and at >= killed and mac not in dead_macs:
                first[src] = min(first.get(src, at), at)
        resumed = [(first[s] - killed) * 1000 for s in moved if s in first]
        if len(resumed) != len(moved):
            raise RuntimeError(f"{len(moved) - len(resumed)} of {len(moved)} moved sources never came back")
        return {"reown_ms": (max(ends) - killed) * 1000, "resume_worst_ms": max(resumed),
                "resume_median_ms": statistics.median(resumed), "moved_sources": len(moved),
                "moved_buckets": len(lost), "own_steps": len(ends)}


def throughput(serving: int, seconds: float) -> dict:
    """Requests per second answered with `serving` nodes holding the block."""
    with Lab(heartbeat="switched", nodes=max(2, serving)) as lab:
        members = list(range(1, serving + 1))
        if serving == 1:
            lab.add_client_sources(SOURCES, route=SOURCE_ROUTE)
            lab.start_agent(1, lab.write_config(1, l2="cluster-mac", backend="xdp", shared=True))
            lab.serve(1, PORT)
            wait(lambda: len(owned(lab, 1)) == BUCKETS, 30, "fw1 owning every bucket")
            lab.resolve([VIP])
        else:
            start(lab, members)
        done = lab.exec("client", [sys.executable, "-m", "agent.labflows", "load", VIP, str(PORT), str(seconds),
                                   *SOURCES])
        result = json.loads(done.stdout)
        return {"requests_per_s": sum(result["answered"].values()) / result["seconds"], **result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nodes", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--serving", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each throughput run")
    parser.add_argument("--quick", action="store_true", help="1 repeat, 2 and 3 nodes, 2 s of load")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.nodes, args.serving, args.seconds = 1, [2, 3], [1, 2], 2.0
    figures = Figures()
    runs: dict[str, dict] = {"death": {}, "throughput": {}}
    for n in args.nodes:
        done = [death(n) for _ in range(args.repeats)]
        runs["death"][n] = done
        figures.add("active_reown_ms", {"nodes": n}, statistics.median(r["reown_ms"] for r in done), "ms")
        figures.add("active_resume_ms", {"nodes": n, "source": "worst"},
                    statistics.median(r["resume_worst_ms"] for r in done), "ms")
    for n in args.serving:
        done = [throughput(n, args.seconds) for _ in range(args.repeats)]
        runs["throughput"][n] = done
        figures.add("active_requests_per_s", {"nodes": n}, statistics.median(r["requests_per_s"] for r in done),
                    "requests/s")
    print(f"# note: {len(os.sched_getaffinity(0))} CPUs shared by every node, the client and its one-threaded "
          "generator: the requests/s line is bound by the generator and the shared CPUs, not by the nodes",
          flush=True)
    write_result(RESULTS / "active.json", "active",
                 {"repeats": args.repeats, "buckets": BUCKETS, "sources": len(SOURCES), "backend": "xdp",
                  "heartbeat": "switched", "advert_interval_s": 0.05, "ping_interval_s": 0.005,
                  "load_seconds": args.seconds}, figures, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
