"""Benchmark: announcing a /16 (65,536 gratuitous ARPs) with dpagent's native
batched sender, against a plain Python send() loop and against the classic
one `arping` process per address.

Paths: sender-only (veth whose peer drops everything in XDP, so only the
sending side works), veth (peer namespace processes every ARP), lab (a bridge
flooding to three neighbour namespaces). Also checks pacing accuracy.
Prints `name{labels} value unit` lines and writes bench/results/garp.json.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _netns import Namespaces, enter, ip  # noqa: E402

from agent.core import frames  # noqa: E402
from agent.dataplane.garp import AnnounceTarget, Sender  # noqa: E402

IFNAME = "s0"
BLOCK = ipaddress.IPv4Network("198.18.0.0/16")
SO_SNDBUFFORCE = 32
XDP_DROP_C = """\
int xdp_drop(void *ctx) __attribute__((section("xdp"), used));
int xdp_drop(void *ctx) { return 1; /* XDP_DROP */ }
char _license[] __attribute__((section("license"), used)) = "GPL";
"""


def xdp_drop_object(workdir: Path) -> Path:
    source, obj = workdir / "xdp_drop.c", workdir / "xdp_drop.o"
    source.write_text(XDP_DROP_C)
    subprocess.run(["clang", "-O2", "-target", "bpf", "-c", str(source), "-o", str(obj)], check=True)
    return obj


def path_sender_only(ns: Namespaces, workdir: Path) -> str:
    sender, sink = ns.new("send"), ns.new("drop")
    ns.veth(sender, IFNAME, sink, "d0")
    ip("link", "set", "d0", "xdp", "obj", str(xdp_drop_object(workdir)), "sec", "xdp", netns=sink)
    return sender


def path_veth(ns: Namespaces, workdir: Path) -> str:
    sender, peer = ns.new("send"), ns.new("peer")
    ns.veth(sender, IFNAME, peer, "p0")
    ip("addr", "add", "198.19.255.1/15", "dev", "p0", netns=peer)
    return sender


def path_lab(ns: Namespaces, workdir: Path) -> str:
    sender, bridge = ns.new("send"), ns.new("br")
    ip("link", "add", "br0", "type", "bridge", netns=bridge)
    ip("link", "set", "br0", "up", netns=bridge)
    ns.veth(sender, IFNAME, bridge, "bs0")
    ip("link", "set", "bs0", "master", "br0", netns=bridge)
    for i in range(1, 4):
        neighbour = ns.new(f"n{i}")
        ns.veth(bridge, f"bn{i}", neighbour, "eth0")
        ip("link", "set", f"bn{i}", "master", "br0", netns=bridge)
        ip("addr", "add", f"198.19.255.{i}/15", "dev", "eth0", netns=neighbour)
    # arping binds to the address it announces: make the block local (AnyIP), as the up-script's `ip addr add` would.
    ip("addr", "add", "198.19.255.254/15", "dev", IFNAME, netns=sender)
    ip("route", "add", "local", str(BLOCK), "dev", "lo", "table", "local", netns=sender)
    return sender


PATHS = {"sender-only": path_sender_only, "veth": path_veth, "lab": path_lab}


def tx_dropped(netns: str) -> int:
    link = json.loads(ip("-s", "-j", "link", "show", IFNAME, netns=netns))[0]
    return int(link["stats64"]["tx"]["dropped"])


def mac_of(netns: str) -> bytes:
    link = json.loads(ip("-j", "link", "show", IFNAME, netns=netns))[0]
    return bytes.fromhex(link["address"].replace(":", ""))


def run_dpagent(netns: str, target: AnnounceTarget, repeats: int) -> list[dict]:
    with enter(netns):
        sender = Sender(IFNAME)
    runs = []
    with sender:
        for i in range(repeats + 1):
            dropped = tx_dropped(netns)
            cpu = time.thread_time()
            result = sender.send_round(target)
            cpu = time.thread_time() - cpu
            if result.error:
                raise RuntimeError(f"dpagent round failed: {result.error}")
            if i == 0:
                continue  # warm-up
            runs.append({
                "frames": result.frames_sent,
                "seconds": result.duration,
                "cpu_seconds": cpu,
                "errors": dict(result.errors),
                "tx_dropped": tx_dropped(netns) - dropped,
            })
    return runs


def run_python_loop(netns: str, addresses: list[bytes], repeats: int) -> list[dict]:
    with enter(netns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 8 << 20)
    sock.bind((IFNAME, 0))
    mac = mac_of(netns)
    prebuilt = [frames.arp_request(mac, a) for a in addresses]
    send = sock.send
    runs = []
    try:
        for i in range(repeats + 1):
            errors = 0
            dropped = tx_dropped(netns)
            cpu, wall = time.thread_time(), time.perf_counter()
            for frame in prebuilt:
                try:
                    send(frame)
                except OSError:
                    errors += 1
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            if i == 0:
                continue
            runs.append({
                "frames": len(prebuilt) - errors,
                "seconds": wall,
                "cpu_seconds": cpu,
                "errors": errors,
                "tx_dropped": tx_dropped(netns) - dropped,
            })
    finally:
        sock.close()
    return runs


def run_arping(netns: str, addresses: list[str]) -> dict:
    """The classic up-script: one `arping -U -c 1` process per address, in sequence."""
    failures = 0
    with enter(netns):
        wall = time.perf_counter()
        for address in addresses:
            done = subprocess.run(["arping", "-q", "-U", "-c", "1", "-I", IFNAME, address], capture_output=True)
            failures += done.returncode != 0
        wall = time.perf_counter() - wall
    return {"addresses": len(addresses), "seconds": wall, "failures": failures}


def run_paced(netns: str, target: AnnounceTarget, pps: int, repeats: int) -> list[float]:
    with enter(netns):
        sender = Sender(IFNAME)
    with sender:
        return [sender.send_round(target, pps=pps).duration for _ in range(repeats)]


def git_commit() -> str | None:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


class Figures:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, name: str, labels: dict[str, str | int], value: float, unit: str) -> None:
        self.rows.append({"name": name, "labels": labels, "value": value, "unit": unit})
        text = ",".join(f"{k}={v}" for k, v in labels.items())
        shown = f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"
        print(f"{name}{{{text}}} {shown} {unit}", flush=True)


def median_rate(runs: list[dict]) -> float:
    return statistics.median(r["frames"] / r["seconds"] for r in runs)


def median_cpu_ns(runs: list[dict]) -> float:
    return statistics.median(r["cpu_seconds"] / r["frames"] * 1e9 for r in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addresses", type=int, default=BLOCK.num_addresses)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--arping-addresses", type=int, default=32,
                        help="arping processes timed in sequence (each takes ~1 s), extrapolated to --addresses")
    parser.add_argument("--paced-frames", type=int, default=4096)
    parser.add_argument("--pps", type=int, default=10_000)
    parser.add_argument("--paced-repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "garp.json")
    args = parser.parse_args()

    hosts = [BLOCK.network_address + i for i in range(args.addresses)]
    packed = [a.packed for a in hosts]
    target = AnnounceTarget(IFNAME, ipv4=b"".join(packed))
    paced = AnnounceTarget(IFNAME, ipv4=b"".join(packed[: args.paced_frames]))
    figures, raw = Figures(), {}

    for path, build in PATHS.items():
        with Namespaces() as ns, tempfile.TemporaryDirectory() as tmp:
            netns = build(ns, Path(tmp))
            raw[path] = {
                "dpagent": run_dpagent(netns, target, args.repeats),
                "python-loop": run_python_loop(netns, packed, args.repeats),
            }
            native, loop = raw[path]["dpagent"], raw[path]["python-loop"]
            figures.add("garp_frames_per_s", {"system": "dpagent", "path": path}, median_rate(native), "frames/s")
            figures.add("garp_frames_per_s", {"system": "python-loop", "path": path}, median_rate(loop), "frames/s")
            figures.add("garp_cpu_ns_per_frame", {"system": "dpagent", "path": path}, median_cpu_ns(native), "ns")
            figures.add("garp_cpu_ns_per_frame", {"system": "python-loop", "path": path}, median_cpu_ns(loop), "ns")
            figures.add("garp_tx_dropped", {"system": "dpagent", "path": path},
                        statistics.median(r["tx_dropped"] for r in native), "frames")
            figures.add("garp_ratio", {"vs": "python-loop", "path": path},
                        median_rate(native) / median_rate(loop), "x")
            if path == "veth":
                durations = run_paced(netns, paced, args.pps, args.paced_repeats)
                raw["paced"] = durations
                expected = args.paced_frames / args.pps
                labels = {"pps": args.pps, "frames": args.paced_frames}
                figures.add("garp_paced_s", labels, statistics.median(durations), "s")
                figures.add("garp_paced_error_pct", labels,
                            (statistics.median(durations) - expected) / expected * 100, "%")
            if path == "lab":
                arping = run_arping(netns, [str(a) for a in hosts[: args.arping_addresses]])
                raw["arping"] = arping
                per_address = arping["seconds"] / arping["addresses"]
                figures.add("garp_frames_per_s", {"system": "arping", "path": path}, 1 / per_address, "frames/s")
                figures.add("garp_block_s", {"system": "arping", "path": path, "addresses": args.addresses},
                            per_address * args.addresses, "s")
                figures.add("garp_block_s", {"system": "dpagent", "path": path, "addresses": args.addresses},
                            args.addresses / median_rate(native), "s")
                figures.add("garp_ratio", {"vs": "arping", "path": path}, median_rate(native) * per_address, "x")

    result = {
        "bench": "garp",
        "settings": {
            "addresses": args.addresses,
            "repeats": args.repeats,
            "arping_addresses": args.arping_addresses,
            "paced_frames": args.paced_frames,
            "pps": args.pps,
            "paced_repeats": args.paced_repeats,
            "kernel": platform.release(),
            "commit": git_commit(),
            "cpus": len(__import__("os").sched_getaffinity(0)),
        },
        "figures": figures.rows,
        "runs": raw,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
