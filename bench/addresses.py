"""Benchmark: making a block's addresses local, dpagent against the classic ways, in one run.

- A /16 prefix: dpagent's one AnyIP route.
- 65,536 loose IPv4 addresses: dpagent's /32 local routes packed with struct and
  sent 512 per sendmsg, against pyroute2 sending one message at a time (the
  library dpagent uses everywhere else), and against the classic up-script's one
  `ip addr add` process per address (timed on a sample and extrapolated
  linearly: a lower bound, as the kernel's cost per interface address grows
  with the number already there).
- 4,096 IPv6 addresses (NDP only answers for interface addresses), and the worst
  event-loop lag while they are added with 8 and with 512 messages per sendmsg:
  rtnetlink applies one sendmsg without rescheduling, so the batch size decides
  how long the agent's own loop (and its adverts) can be kept off the CPU.

Every measurement runs in a fresh network namespace with a veth pair. Prints
`name{labels} value unit` lines; writes bench/results/addresses.json.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from _report import RESULTS, Figures, write_result

from agent.config import Block
from agent.dataplane import nlbatch
from agent.dataplane.addresses import DPAGENT_PROTO, AddressPlane
from agent.netns import Namespaces, enter, ip

PREFIX = ipaddress.ip_network("198.18.0.0/16")
LOOSE_BASE = ipaddress.IPv4Address("198.19.0.0")
V6_BASE = ipaddress.IPv6Address("2001:db8:1::")


def fresh(spaces: Namespaces) -> str:
    name = spaces.new("addr")
    spaces.veth(name, "b0", name, "b1")
    return name


def timed(netns: str, work) -> float:
    """Seconds `work()` took, run in a thread that lives in `netns`."""
    seconds: list[float] = []

    def run() -> None:
        with enter(netns):
            started = time.perf_counter()
            work()
            seconds.append(time.perf_counter() - started)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return seconds[0]


def dpagent_take(netns: str, block: Block) -> float:
    def work() -> None:
        plane = AddressPlane()
        try:
            result = plane.take(block)
            if result.errors or result.problem:
                raise RuntimeError(f"take failed: {result.as_dict()}")
        finally:
            plane.close()
    return timed(netns, work)


def pyroute2_routes(netns: str, count: int) -> float:
    def work() -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            for i in range(count):
                ipr.route("add", dst=f"{LOOSE_BASE + i}/32", type="local", table=255, oif=1,
                          scope=254, proto=DPAGENT_PROTO)
    return timed(netns, work)


def ip_addr_add(netns: str, count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        ip("addr", "add", f"{LOOSE_BASE + i}/32", "dev", "b0", netns=netns)
    return time.perf_counter() - started


def loop_lag(netns: str, count: int, per_send: int) -> tuple[float, float]:
    """(seconds to add `count` IPv6 addresses, worst lag of a 10 ms loop timer meanwhile)."""
    def add() -> float:
        with enter(netns):
            index = socket.if_nametoindex("b0")
            items = [(str(V6_BASE + i), nlbatch.interface_address(V6_BASE + i, DPAGENT_PROTO, index))
                     for i in range(count)]
            batcher = nlbatch.Batcher()
            try:
                started = time.perf_counter()
                batcher.apply(nlbatch.RTM_NEWADDR, items, per_send)
                return time.perf_counter() - started
            finally:
                batcher.close()

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(ThreadPoolExecutor(1), add)
        worst = 0.0
        while not work.done():
            before = loop.time()
            await asyncio.sleep(0.01)
            worst = max(worst, loop.time() - before - 0.01)
        return await work, worst

    return asyncio.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loose", type=int, default=65536, help="loose IPv4 addresses")
    parser.add_argument("--v6", type=int, default=4096, help="IPv6 addresses")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ip-sample", type=int, default=256, help="`ip addr add` processes timed")
    parser.add_argument("--quick", action="store_true", help="1 repeat, 4,096 loose addresses")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.loose = 1, 4096
    figures = Figures()
    runs: dict[str, list[float]] = {}

    def measure(key: str, make) -> float:
        values = []
        for _ in range(args.repeats):
            with Namespaces("dpa") as spaces:
                values.append(make(fresh(spaces)))
        runs[key] = values
        return statistics.median(values)

    prefix_block = Block("bench", "b0", (PREFIX,), ())
    loose_block = Block("bench", "b0", (), tuple(LOOSE_BASE + i for i in range(args.loose)))
    v6_block = Block("bench", "b0", (), tuple(V6_BASE + i for i in range(args.v6)))

    prefix = measure("dpagent/prefix", lambda ns: dpagent_take(ns, prefix_block))
    figures.add("address_take_s", {"system": "dpagent", "kind": "prefix", "addresses": PREFIX.num_addresses},
                prefix, "s")
    ours = measure("dpagent/loose-v4", lambda ns: dpagent_take(ns, loose_block))
    figures.add("address_take_s", {"system": "dpagent", "kind": "loose-v4", "addresses": args.loose}, ours, "s")
    theirs = measure("pyroute2/loose-v4", lambda ns: pyroute2_routes(ns, args.loose))
    figures.add("address_take_s", {"system": "pyroute2", "kind": "loose-v4", "addresses": args.loose}, theirs, "s")
    sample = measure("ip-addr-add/sample", lambda ns: ip_addr_add(ns, args.ip_sample))
    classic = sample * args.loose / args.ip_sample
    figures.add("address_take_s", {"system": "ip-addr-add", "kind": "loose-v4", "addresses": args.loose,
                                   "extrapolated_from": args.ip_sample}, classic, "s")
    figures.add("address_ratio", {"vs": "pyroute2", "kind": "loose-v4"}, theirs / ours, "x")
    figures.add("address_ratio", {"vs": "ip-addr-add", "kind": "loose-v4"}, classic / ours, "x")
    figures.add("address_ratio", {"vs": "ip-addr-add", "kind": "prefix"}, classic / prefix, "x")

    v6 = measure("dpagent/v6", lambda ns: dpagent_take(ns, v6_block))
    figures.add("address_take_s", {"system": "dpagent", "kind": "v6", "addresses": args.v6}, v6, "s")
    for per_send in (nlbatch.IPV6_ADDRESSES_PER_SEND, nlbatch.ROUTES_PER_SEND):
        pairs = []
        for _ in range(args.repeats):
            with Namespaces("dpa") as spaces:
                pairs.append(loop_lag(fresh(spaces), args.v6, per_send))
        runs[f"v6-lag/{per_send}"] = pairs
        figures.add("address_v6_add_s", {"per_send": per_send, "addresses": args.v6},
                    statistics.median(p[0] for p in pairs), "s")
        figures.add("address_loop_lag_max_ms", {"per_send": per_send, "addresses": args.v6},
                    max(p[1] for p in pairs) * 1000, "ms")

    write_result(RESULTS / "addresses.json", "addresses",
                 {"loose": args.loose, "v6": args.v6, "repeats": args.repeats, "ip_sample": args.ip_sample},
                 figures, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
