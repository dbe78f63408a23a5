"""Benchmark: the XDP cluster filter against a bare XDP_PASS program, the nft backend and no filter.

- xdp_ns_per_packet{prog=filter|bare,case}: the kernel's own average time per
  run of BPF_PROG_TEST_RUN (repeat 1,000,000) for dpagent's filter and for
  bench/xdp_pass.bpf.c (`return XDP_PASS`), on the same frames in the same run.
  The filter's block is a /16 plus 4,096 single addresses (LPM tries), hashing
  on source address and both ports, nothing owned. Cases: `not-owned` (a TCP
  frame to the cluster MAC and a block address: every step, ending in
  XDP_DROP), `not-owned-ipv6` (the same in IPv6) and `not-owned-ipv6-hbh`
  (behind a hop-by-hop header, which the ports are found past), `not-block` (to the cluster MAC but an address of no
  block: an LPM miss) and `unicast` (to the host's own MAC, most of an
  interface's traffic: passed before any lookup). An owned frame cannot be
  timed this way: its first run rewrites its MAC, so the other 999,999 would
  time the cheaper path of a frame to the host's own MAC. Then
  xdp_ns_ratio{case} = filter / bare.
- drop_pps{backend=xdp|nft|none,mode}: frames of buckets this node does not own
  dropped per second by the receiving end of a veth pair. The generator is
  bench/xdp_gen.bpf.c run by BPF_PROG_TEST_RUN with live frames (what
  xdp-tools' xdp-trafficgen does): 60-byte UDP frames to the cluster MAC,
  destinations pseudo-random over the block's /16, redirected out of the
  other end, from a thread pinned to one CPU. veth hands such frames to its
  peer's native XDP program as XDP frames, with no socket buffer yet, as a
  NIC's driver does; the receiving end polls in threaded NAPI, pinned to the
  other CPU. `xdp`: dpagent's program, attached natively, counted by its own
  counters. `nft`: the bare XDP_PASS program (veth then builds a socket buffer
  per frame, as a driver does) and the agent's netdev ingress filter
  (agent.core.clusterset) with no bucket owned, a `counter` rule inserted at the
  head of its chain to count its frames. `none`: the bare program and no
  filter; nothing is local on the receiver, so the IP layer drops every frame,
  counted as IpInReceives. Each figure: the counter's increase per second over
  a fixed window after a warm-up, median of the runs. Where the generator did
  not offer at least 1.2 times what the receiver took in, the generator set the
  pace and the figure prints as a lower bound. CPU shares and the generator's
  rate are in `runs`. Then drop_ratio{vs=nft} = xdp / nft. (On veth the agent
  attaches generically, agent.dataplane.xdp says why; a veth fed from a
  socket, as in bench/nft_scale.py, hands over socket buffers that the sender
  already paid for, and measures the sender more than the filter.)

Prints `name{labels} value unit` lines; writes bench/results/xdp.json.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nftables
from _report import RESULTS, Figures, write_result
from nft_scale import RECEIVER_MAC, SENDER, cpu_shares, cpu_ticks, in_netns
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Ether

from agent.config import Block, L2Config
from agent.core import clusterset
from agent.core.buckets import HashFields
from agent.dataplane import bpf, xdp
from agent.netns import Namespaces, enter, ip, run_in

HERE = Path(__file__).resolve().parent
BARE_SOURCE, GEN_SOURCE = HERE / "xdp_pass.bpf.c", HERE / "xdp_gen.bpf.c"
CLUSTER_MAC = "01:00:5e:00:01:01"
BLOCK = Block(
    name="bench", interface="rx0",
    prefixes=(ipaddress.ip_network("198.19.0.0/16"), ipaddress.ip_network("2001:db8:5::/116")),
    addresses=tuple(ipaddress.ip_address("203.0.0.0") + i * 7 for i in range(4096)),
    l2=L2Config(mode="cluster-mac", cluster_mac=CLUSTER_MAC, buckets=256, hash="sourceip-sourceport-destport",
                backend="xdp"))
REPEAT = 1_000_000
# The generator offered at least this many times what a receiver took in: the receiver
# was the limit, and its figure is its capacity rather than a lower bound.
OFFERED = 1.2
XDP_DROP, XDP_PASS = 1, 2


# The generator's frame: 60 bytes of UDP to the block's /16 (xdp_gen.bpf.c varies the
# destination), from one source, to the cluster MAC.
TEMPLATE = bytes(Ether(dst=CLUSTER_MAC, src=SENDER[0]) / IP(src=SENDER[1], dst="198.19.0.1") /
                 UDP(sport=40000, dport=443) / (b"\0" * 18))


def frames() -> dict[str, bytes]:
    ether = Ether(dst=CLUSTER_MAC, src=SENDER[0])
    return {
        "not-owned": bytes(ether / IP(src="192.0.2.1", dst="198.19.7.7") / TCP(sport=40000, dport=443)),
        "not-owned-ipv6": bytes(ether / IPv6(src="2001:db8:ff::1", dst="2001:db8:5::7") / TCP(sport=40000, dport=443)),
        "not-owned-ipv6-hbh": bytes(ether / IPv6(src="2001:db8:ff::1", dst="2001:db8:5::7") / IPv6ExtHdrHopByHop() /
                                    TCP(sport=40000, dport=443)),
        "not-block": bytes(ether / IP(src="192.0.2.1", dst="192.0.2.200") / TCP(sport=40000, dport=443)),
        "unicast": bytes(Ether(dst=RECEIVER_MAC, src=SENDER[0]) / IP(src="192.0.2.1", dst="192.0.2.200") /
                         TCP(sport=40000, dport=443)),
    }


def build_object(source: Path, directory: str) -> Path:
    """A bench program compiled as native/build.py compiles the filter."""
    out = Path(directory) / source.name.replace(".c", ".o")
    subprocess.run(["clang", "-target", "bpf", "-O2", "-g", "-Wall", "-Werror", "-I/usr/include/x86_64-linux-gnu",
                    "-c", str(source), "-o", str(out)], check=True)
    return out


def loaded_filter() -> bpf.BpfObject:
    """dpagent's program with BLOCK in slot 0, nothing owned."""
    program = bpf.BpfObject()
    xdp.load_block(program, 0, BLOCK, RECEIVER_MAC)
    return program


def ns_per_packet(bare_object: Path, repeat: int) -> dict[str, dict[str, int]]:
    filt, bare = loaded_filter(), bpf.BpfObject(bare_object)
    try:
        out: dict[str, dict[str, int]] = {}
        for case, frame in frames().items():
            ran = filt.test_run(frame, repeat)
            expected = XDP_PASS if case in ("not-block", "unicast") else XDP_DROP
            if ran.verdict != expected:
                raise RuntimeError(f"{case}: the filter said {ran.verdict}, not {expected}")
            out[case] = {"filter": ran.ns_per_run,
                         "bare": bare.test_run(frame, repeat, name="xdp_pass_only").ns_per_run}
        return out
    finally:
        filt.close()
        bare.close()


def snmp_ip_in_receives() -> int:
    """IpInReceives of the calling thread's namespace."""
    with open("/proc/thread-self/net/snmp") as snmp:
        header, values = [line.split() for line in snmp if line.startswith("Ip:")][:2]
    return int(values[header.index("InReceives")])


class Receiver:
    """One backend on rx0 in the calling thread's namespace, and how it counts. veth takes
    XDP frames only while a native program is attached: the nft and no-filter receivers
    get the bare XDP_PASS program, and veth builds a socket buffer for each frame, as a
    NIC's driver does."""

    def __init__(self, backend: str, bare_object: Path) -> None:
        self.backend = backend
        self.program = loaded_filter() if backend == "xdp" else bpf.BpfObject(bare_object)
        name = bpf.FILTER_PROGRAM if backend == "xdp" else "xdp_pass_only"
        bpf.attach(socket.if_nametoindex("rx0"), self.program.prog_fd(name), "native")
        if backend == "nft":
            text = clusterset.add_block(BLOCK.name, "rx0", CLUSTER_MAC, HashFields(BLOCK.l2.hash), BLOCK.l2.buckets,
                                        BLOCK.l2.hash_seed)
            text += f"insert rule netdev {clusterset.TABLE} ingress.{BLOCK.name} counter\n"
            rc, _out, error = nftables.Nftables().cmd(text)
            if rc:
                raise RuntimeError(error)

    def count(self) -> int:
        if self.backend == "xdp":
            return xdp.counters_of(self.program.map_fd("dpagent_counters"), 0, bpf.possible_cpus())["dropped"]
        if self.backend == "nft":
            rc, out, error = nftables.Nftables().cmd(f"list chain netdev {clusterset.TABLE} ingress.{BLOCK.name}")
            if rc:
                raise RuntimeError(error)
            return int(re.search(r"counter packets (\d+)", out)[1])
        return snmp_ip_in_receives()


class Generator:
    """bench/xdp_gen.bpf.c sending out of tx0 until stopped, from a thread of its own in
    the generator's namespace, pinned to one CPU."""

    CHUNK = 1 << 20

    def __init__(self, program: Path, netns: str, cpu: int) -> None:
        self.sent = 0
        self.problem: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(program, netns, cpu), daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self.problem:
            raise RuntimeError(f"generator: {self.problem}")

    def _run(self, path: Path, netns: str, cpu: int) -> None:
        try:
            with enter(netns):
                os.sched_setaffinity(0, {cpu})
                program = bpf.BpfObject(path)
                try:
                    bpf.update(program.map_fd("dpgen_port"), xdp.ffi.new("uint32_t *", 0),
                               xdp.ffi.new("uint32_t *", socket.if_nametoindex("tx0")))
                    self._ready.set()
                    while not self._stop.is_set():
                        program.test_run(TEMPLATE, self.CHUNK, name="dpgen_send", live=True)
                        self.sent += self.CHUNK
                finally:
                    program.close()
        except BaseException as exc:  # reported by the caller's thread
            self.problem = exc
            self._ready.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        if self.problem:
            raise RuntimeError(f"generator: {self.problem}")


def napi_threads(device: str) -> list[int]:
    """The kernel threads of a device's threaded NAPI (napi/DEVICE-ID)."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().startswith(f"napi/{device}-"):
                found.append(int(comm.parent.name))
        except OSError:
            continue
    return found


def drop_pps(objects: dict[str, Path], backend: str, warmup: float, window: float) -> dict:
    """One run in namespaces of its own: frames dropped per second over `window` after `warmup`."""
    cpus = sorted(os.sched_getaffinity(0))
    sender_cpu, sink_cpu = (cpus[0], cpus[1]) if len(cpus) > 1 else (cpus[0], cpus[0])
    with Namespaces("dpxdp") as spaces:
        gen, sink = spaces.new("gen"), spaces.new("sink")
        spaces.veth(gen, "tx0", sink, "rx0", up=False)
        ip("link", "set", "tx0", "address", SENDER[0], "up", netns=gen)
        ip("link", "set", "rx0", "address", RECEIVER_MAC, "up", netns=sink)
        receiver = in_netns(sink, lambda: Receiver(backend, objects["bare"]))
        try:
            # veth polls in NAPI, on the CPU that scheduled it: in a thread of its own,
            # pinned, the receiver has a CPU to itself.
            run_in(sink, ["sh", "-c", "echo 1 > /sys/class/net/rx0/threaded"])
            threads = napi_threads("rx0")
            for pid in threads:
                os.sched_setaffinity(pid, {sink_cpu})
            generator = Generator(objects["gen"], gen, sender_cpu)
            try:
                time.sleep(warmup)
                ticks0, s0 = cpu_ticks(), generator.sent
                t0, c0 = time.monotonic(), in_netns(sink, receiver.count)
                time.sleep(window)
                t1, c1 = time.monotonic(), in_netns(sink, receiver.count)
                ticks1, s1 = cpu_ticks(), generator.sent
            finally:
                generator.stop()
        finally:
            receiver.program.close()
    return {"pps": (c1 - c0) / (t1 - t0), "counted": c1 - c0, "window_s": t1 - t0,
            "sent_pps": (s1 - s0) / (t1 - t0), "napi_threads": len(threads),
            "sender_cpu_share": cpu_shares(ticks0, ticks1, sender_cpu),
            "sink_cpu_share": cpu_shares(ticks0, ticks1, sink_cpu)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=REPEAT, help="BPF_PROG_TEST_RUN repetitions per figure")
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="1 repeat, a 2 s window")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.window = 1, 2.0
    figures = Figures()
    runs: dict[str, object] = {}

    with tempfile.TemporaryDirectory(prefix="dpxdp-") as build:
        bare = build_object(BARE_SOURCE, build)
        timed = [ns_per_packet(bare, args.repeat) for _ in range(args.repeats)]
        runs["ns_per_packet"] = timed
        for case in timed[0]:
            values = {prog: statistics.median(t[case][prog] for t in timed) for prog in ("filter", "bare")}
            for prog, value in values.items():
                figures.add("xdp_ns_per_packet", {"prog": prog, "case": case}, value, "ns")
            figures.add("xdp_ns_ratio", {"case": case, "vs": "bare"}, values["filter"] / values["bare"], "x")

        objects = {"bare": bare, "gen": build_object(GEN_SOURCE, build)}
        systems = ("xdp", "nft", "none")
        drops: dict[str, list[dict]] = {b: [] for b in systems}
        for _ in range(args.repeats):
            for backend in systems:
                drops[backend].append(drop_pps(objects, backend, args.warmup, args.window))
    runs["drop"] = drops
    pps, limited = {}, {}
    for backend in systems:
        pps[backend] = statistics.median(r["pps"] for r in drops[backend])
        # The receiver set the pace only where more was offered than it took in.
        limited[backend] = statistics.median(r["sent_pps"] / max(1.0, r["pps"]) for r in drops[backend]) < OFFERED
        figures.add("drop_pps", {"backend": backend, "mode": "native" if backend == "xdp" else "-"}, pps[backend],
                    "pps", lower_bound=limited[backend])
    figures.add("drop_ratio", {"backend": "xdp", "mode": "native", "vs": "nft"}, pps["xdp"] / pps["nft"], "x",
                lower_bound=limited["xdp"] and not limited["nft"])

    write_result(RESULTS / "xdp.json", "xdp",
                 {"repeats": args.repeats, "test_run_repeat": args.repeat, "window_s": args.window,
                  "warmup_s": args.warmup, "block": {"prefixes": [str(p) for p in BLOCK.prefixes],
                                                     "addresses": len(BLOCK.addresses), "hash": BLOCK.l2.hash,
                                                     "buckets": BLOCK.l2.buckets, "owned": 0},
                  "generator": "bench/xdp_gen.bpf.c: BPF_PROG_TEST_RUN live frames, 60-byte UDP to the cluster MAC "
                               "redirected into the veth, one pinned CPU; the receiver in threaded NAPI on the other",
                  "frames": {case: len(frame) for case, frame in frames().items()}},
                 figures, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
