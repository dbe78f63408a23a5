"""Benchmark: failover outage per address, dpagent against keepalived (VRRPv3), in the
same lab and the same run: node death and graceful failover, blocks of 256 and
65,536 addresses, heartbeat links as direct cables and through a switch.

The client probes PROBE_TARGETS addresses across the block (its first and last
usable address among them), each every 1 ms on its own (agent.labprobe), and
records every reply with the MAC that sent it and the kernel's receive time.
An address's outage is its longest silence from its last reply before the
failure to its first reply from the new holder (labprobe.address_outages): with
a big block the announcement reaches the addresses one after another, so the
addresses differ, and a run reports the first (soonest back), the median and
the worst address; the figures are medians over the runs. The worst address is
the headline: a user holding the whole block lives with it.

Two heartbeat topologies (agent.lab.Lab): "direct", two veth cables, where a
dead node takes the survivor's carrier with it and carrier loss tells at once;
and "switched", each link through a bridge, where the survivor's link stays up
and only the dead interval tells. Every run builds a fresh lab (no neighbour
entries or addresses left over from the previous run).

keepalived holds the same addresses the classic way, one /32 per address in
`virtual_ipaddress` on ext0, VRRP on the heartbeat link hb0. Node death is
SIGKILL of the daemon's process group plus its links down (as for dpagent);
graceful is SIGTERM to keepalived's main process (it sends priority 0).
dpagent runs in each L2 mode (`l2` label, agent.config's block.l2.mode): garp
(an announcement per address, keepalived's way too), vmac (neighbours keep the
VRRP MAC; a takeover sends one frame per round from it) and cluster-mac (every
node receives the block's multicast MAC; a takeover owns the buckets and sends
nothing). keepalived is labelled l2=garp.
Prints `name{labels} value unit` lines and writes bench/results/failover.json.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Agents and probes run as `python -m agent...` inside the namespaces: make the package importable from any cwd.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

from _report import RESULTS, Figures, write_result  # noqa: E402

from agent.lab import HEARTBEATS, Lab  # noqa: E402
from agent.labprobe import PROBE_TARGETS, address_outages, outage_stats  # noqa: E402

BLOCKS = {256: "198.18.0.0/24", 65536: "198.18.0.0/16"}
CASES = ("kill", "graceful")
L2_MODES = ("garp", "vmac", "cluster-mac")
SYSTEMS = ("dpagent", "keepalived-fast", "keepalived-default")
STATS = ("first", "median", "worst")
WARMUP_S = 1.0          # probe runs this long before the failure, so every target's neighbour entry is resolved
SETTLE_S = 1.0          # probe keeps running after recovery was seen, to catch a second answering node
DPAGENT_INTERVAL = 0.05  # the lab's default: detection 3 x 50 ms
KEEPALIVED_DEFAULT_INTERVAL = 1.0
KEEPALIVED_FAST_CANDIDATES = (0.05, 0.1)
VRID = 77
ANNOUNCE_BLOCK = "ext"  # the block's name in the lab's configuration: its step is announce:ext


# --- the two systems -----------------------------------------------------------------------


class Dpagent:
    name = "dpagent"

    def __init__(self, block: str, l2: str = "garp") -> None:
        self.block = block
        self.l2 = l2
        self.settings = {"advert_interval": DPAGENT_INTERVAL, "dead_multiplier": 3,
                         "heartbeat": "hb0+hb1, IPv4 multicast", "preempt": False}

    def start(self, lab: Lab, timeout: float) -> None:
        lab.start_agent(1, lab.write_config(1, block=self.block, advert_interval=DPAGENT_INTERVAL, l2=self.l2))
        lab.wait_state(1, "MASTER", timeout=timeout)
        lab.start_agent(2, lab.write_config(2, block=self.block, advert_interval=DPAGENT_INTERVAL, l2=self.l2))
        lab.wait_master_seen(2, 1, timeout=timeout)

    def fail(self, lab: Lab, case: str) -> float:
        if case == "kill":
            return lab.kill_node(1)
        at = time.time()
        lab.kill_agent(1, signal.SIGTERM)
        return at

    def wait_recovered(self, lab: Lab, timeout: float) -> bool:
        try:
            lab.wait_state(2, "MASTER", timeout=timeout)
        except TimeoutError:
            return False
        return True

    @staticmethod
    def takeover(lab: Lab, fail_at: float) -> dict:
        """Where the new master's time went: detection (the failure to its MASTER transition),
        its steps, and its worst gap between two heartbeat frames sent since it took over
        (takeover work, routes and a /16 of announcements, must not delay the adverts)."""
        status = lab.status(2)
        if not status:
            return {}
        took = status["transitions"][-1]
        return {
            "reason": took["reason"],
            "detect_ms": (took["at"] - fail_at) * 1000,
            "steps_ms": {s["name"]: {"start": (s["started"] - fail_at) * 1000, "took": s["seconds"] * 1000}
                         for s in took["steps"]},
            "worst_advert_gap_ms": took["max_advert_gap_s"] * 1000,
        }


class Keepalived:
    """keepalived -P (VRRP only) in fw1/fw2, its state read from its console log."""

    def __init__(self, name: str, block: str, interval: float) -> None:
        self.name = name
        self.block = ipaddress.ip_network(block)
        self.interval = interval
        self.procs: dict[int, subprocess.Popen] = {}
        self.logs: dict[int, Path] = {}
        self.settings = {
            "version": keepalived_version(),
            "advert_int": interval,
            "non_defaults": {
                "vrrp_version": "3 (the issue asks for VRRPv3)",
                "interface": "hb0 (the heartbeat link; adverts multicast to 224.0.0.18)",
                "virtual_ipaddress": "one /32 per block address, dev ext0",
                "state/priority": "fw1 MASTER 150, fw2 BACKUP 100 (dpagent's priorities)",
                "advert_int": f"{interval}",
                "dont_track_primary": "set: over the direct-cable topology node death takes the survivor's "
                                      "hb0 carrier down too and keepalived would go FAULT instead of taking "
                                      "over (over the switched one the survivor's link stays up)",
                "command line": "-n -l -G -P and private pid files (foreground, console log, no syslog, VRRP only)",
            },
        }

    def config(self, lab: Lab, node: int) -> Path:
        addresses = "\n".join(f"        {self.block.network_address + i}/32 dev ext0"
                              for i in range(self.block.num_addresses))
        path = lab.dir / f"keepalived-fw{node}.conf"
        path.write_text(f"""\
global_defs {{
    router_id fw{node}
    vrrp_version 3
}}
vrrp_instance VI_1 {{
    state {"MASTER" if node == 1 else "BACKUP"}
    interface hb0
    dont_track_primary
    virtual_router_id {VRID}
    priority {200 - 50 * node}
    advert_int {self.interval}
    virtual_ipaddress {{
{addresses}
    }}
}}
""")
        return path

    def spawn(self, lab: Lab, node: int) -> None:
        d = lab.dir
        # /run is shared by all namespaces: every pid file is private to this lab.
        pids = [f"-p{d}/ka{node}.pid", f"-r{d}/ka{node}-vrrp.pid", f"-c{d}/ka{node}-chk.pid", f"-b{d}/ka{node}-bfd.pid"]
        self.logs[node] = d / f"keepalived-fw{node}.log"
        with open(self.logs[node], "wb") as log:
            proc = lab.spawn(f"fw{node}", ["keepalived", "-n", "-l", "-G", "-P", "-f", str(self.config(lab, node)), *pids],
                             stdout=log, stderr=subprocess.STDOUT)
        self.procs[node] = proc
        lab.agents[node] = proc  # so lab.kill_node() kills keepalived's process group exactly as it kills dpagent

    def states(self, node: int) -> list[str]:
        text = self.logs[node].read_text(errors="replace")
        return [line.split("Entering ", 1)[1].split(" STATE")[0] for line in text.splitlines() if "Entering " in line]

    def held(self, lab: Lab, node: int) -> int:
        out = lab.exec(f"fw{node}", ["ip", "-4", "-o", "addr", "show", "dev", "ext0"]).stdout
        return out.count(" 198.18.")

    def wait_master_with_block(self, lab: Lab, node: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.states(node)[-1:] == ["MASTER"] and self.held(lab, node) == self.block.num_addresses:
                return True
            time.sleep(0.05 if self.block.num_addresses <= 4096 else 1.0)
        return False

    def start(self, lab: Lab, timeout: float) -> None:
        self.spawn(lab, 1)
        if not self.wait_master_with_block(lab, 1, timeout):
            raise SetupTimeout(f"fw1 holds {self.held(lab, 1)} of {self.block.num_addresses} addresses "
                               f"after {timeout:.0f} s (states {self.states(1)})")
        self.spawn(lab, 2)
        deadline = time.monotonic() + timeout
        while self.states(2)[-1:] != ["BACKUP"]:
            if time.monotonic() > deadline:
                raise SetupTimeout("fw2 never entered BACKUP")
            time.sleep(0.02)
        # Three adverts heard without fw2 taking over: the pair is stable.
        time.sleep(3 * self.interval + 0.2)
        if "MASTER" in self.states(2):
            raise SetupTimeout(f"fw2 became master during set-up (states {self.states(2)})")

    def fail(self, lab: Lab, case: str) -> float:
        if case == "kill":
            return lab.kill_node(1)
        at = time.time()
        os.kill(self.procs[1].pid, signal.SIGTERM)  # the main process, as systemd's KillMode=process does
        return at

    def wait_recovered(self, lab: Lab, timeout: float) -> bool:
        return self.wait_master_with_block(lab, 2, timeout)


class SetupTimeout(Exception):
    pass


def keepalived_version() -> str:
    done = subprocess.run(["keepalived", "--version"], capture_output=True, text=True)
    return (done.stdout + done.stderr).splitlines()[0].strip()


# --- one run -------------------------------------------------------------------------------


@dataclass
class Run:
    outage_ms: dict[str, float] = field(default_factory=dict)  # stat -> ms, over the probed addresses
    lower_bound: dict[str, bool] = field(default_factory=dict)  # stat -> only a lower bound
    addresses: list[dict] = field(default_factory=list)
    dual_answer: bool = False
    timed_out: bool = False
    unanswered_targets: int = 0
    probe_max_send_gap_ms: float = 0.0
    error: str | None = None
    steps: dict = field(default_factory=dict)


def analyse(result: dict, fail_at: float, new_mac: str, timed_out: bool, ended_at: float) -> Run:
    outages = address_outages(result, fail_at, new_mac, ended_at)
    stats = outage_stats(outages)
    missing = sum(not o.back for o in outages)
    run = Run(timed_out=timed_out or missing > 0, unanswered_targets=missing)
    run.outage_ms = {stat: value * 1000 for stat, value in stats.items()}
    # An address never back counts with the time until the end: a stat is a lower bound as soon as
    # it may be such an address (worst: any; median: half of them; first: all).
    run.lower_bound = {"first": missing == len(outages), "median": missing * 2 >= len(outages), "worst": missing > 0}
    # Two nodes answering: another MAC answers an address after the new holder has.
    run.dual_answer = any(o.old_after_new for o in outages)
    run.probe_max_send_gap_ms = max(o.max_send_gap for o in outages) * 1000
    run.addresses = [{"target": o.target, "outage_ms": round(o.seconds * 1000, 3), "back": o.back,
                      "back_ms": round((o.first_after - fail_at) * 1000, 3) if o.back else None,
                      "old_after_new": o.old_after_new, "max_send_gap_ms": round(o.max_send_gap * 1000, 3)}
                     for o in outages]
    return run


@dataclass
class Picture:
    """What a run's timeline is drawn from (agent.labplot); kept out of the JSON."""

    result: dict
    fail_at: float
    nodes: dict[str, str]
    ended_at: float
    new_mac: str
    transition: dict | None = None


def one_run(system: Dpagent | Keepalived, block: str, heartbeat: str, case: str, timeout: float,
            setup_timeout: float, probe_targets: int, realtime: bool) -> tuple[Run, Picture]:
    with Lab(heartbeat=heartbeat) as lab:
        t0 = time.monotonic()
        system.start(lab, setup_timeout)
        steps: dict = {"setup_s": time.monotonic() - t0}
        new_mac = lab.mac("fw2", "ext0")
        nodes = {lab.mac("fw1", "ext0"): "fw1", new_mac: "fw2"}
        probe = lab.start_probe(WARMUP_S + timeout + SETTLE_S + 5, block=block, count=probe_targets,
                                realtime=realtime)
        time.sleep(WARMUP_S)
        fail_at = system.fail(lab, case)
        recovered = system.wait_recovered(lab, timeout)
        steps["control_plane_recovered_s"] = time.time() - fail_at
        if recovered:
            time.sleep(SETTLE_S)
            if isinstance(system, Dpagent):
                steps.update(system.takeover(lab, fail_at))
        ended_at = time.time()
        status = lab.status(2) if isinstance(system, Dpagent) and recovered else None
        result = probe.finish(stop=True)
        run = analyse(result, fail_at, new_mac, not recovered, ended_at)
        run.steps = steps
        return run, Picture(result, fail_at, nodes, ended_at, new_mac, status["transitions"][-1] if status else None)


def draw_run(path: Path, picture: Picture, title: str, case: str) -> Path:
    """One run's timeline: every probed address's replies by node, the failure, the new master's
    detection and steps (dpagent's status) and the first reply."""
    from agent import labplot

    outages = address_outages(picture.result, picture.fail_at, picture.new_mac, picture.ended_at)
    detect, steps = labplot.takeover(picture.transition) if picture.transition else (None, [])
    return labplot.timeline(path, picture.result, picture.fail_at, picture.nodes, outages=outages, detect=detect,
                            steps=steps, failure="node death" if case == "kill" else "graceful hand-over",
                            title=title)


def draw_median_run(key: str, runs: list[tuple[Run, Picture]], case: str) -> Path | None:
    """The timeline of the case's median run by its worst address, to bench/results/failover-<key>.png."""
    measured = sorted((r for r in runs if not r[0].error), key=lambda r: r[0].outage_ms.get("worst", 0))
    if not measured:
        return None
    run, picture = measured[(len(measured) - 1) // 2]
    title = f"{key}: median of {len(measured)} run(s), worst address {run.outage_ms['worst']:.1f} ms"
    return draw_run(RESULTS / f"failover-{key.replace('/', '-')}.png", picture, title, case)


def draw_summary(path: Path, figures: Figures) -> Path:
    """Worst (and median) address outage by system and block size, from the figures just reported."""
    from agent import labplot

    rows: dict[tuple, dict] = {}
    for row in figures.rows:
        labels = row["labels"]
        if row["name"] != "failover_outage_ms" or labels["stat"] not in ("worst", "median"):
            continue
        system = f"{labels['system']} {labels['l2']}" if labels["system"] == "dpagent" else labels["system"]
        key = (system, labels["block"], labels["heartbeat"], labels["case"])
        rows.setdefault(key, {})[labels["stat"]] = row
    outcomes = [labplot.Outcome(*key, worst_ms=found["worst"]["value"],
                                median_ms=found["median"]["value"] if "median" in found else None,
                                lower_bound=found["worst"].get("lower_bound", False))
                for key, found in rows.items() if "worst" in found]
    return labplot.summary(path, outcomes)


# --- the benchmark -------------------------------------------------------------------------


def fast_interval_that_works(quiet_s: float = 3.0) -> tuple[float, dict]:
    """keepalived's smallest advert interval (of the candidates) at which an idle pair stays stable."""
    tried = {}
    for interval in KEEPALIVED_FAST_CANDIDATES:
        system = Keepalived("probe", BLOCKS[256], interval)
        try:
            with Lab() as lab:
                system.start(lab, 15)
                time.sleep(quiet_s)
                stable = system.states(1)[-1:] == ["MASTER"] and "MASTER" not in system.states(2)
                tried[str(interval)] = {"stable": stable, "fw1": system.states(1), "fw2": system.states(2)}
        except SetupTimeout as exc:
            stable = False
            tried[str(interval)] = {"stable": False, "error": str(exc)}
        if stable:
            return interval, tried
    return KEEPALIVED_FAST_CANDIDATES[-1], tried


def median_of(values: list[tuple[float, bool]]) -> tuple[float | None, bool]:
    """The median of (value, lower bound) pairs and whether it is only a lower bound
    (a lower-bound value at or below the median)."""
    if not values:
        return None, False
    median = statistics.median(v for v, _ in values)
    return median, any(lower and v <= median for v, lower in values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, the 256-address block only (smoke run)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keepalived-big-repeats", type=int, default=1,
                        help="repeats of keepalived with the 65,536-address block (each may take minutes)")
    parser.add_argument("--blocks", type=int, nargs="+", default=sorted(BLOCKS), choices=sorted(BLOCKS))
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--heartbeats", nargs="+", default=list(HEARTBEATS), choices=HEARTBEATS)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--l2", nargs="+", default=list(L2_MODES), choices=L2_MODES, help="dpagent's L2 modes")
    parser.add_argument("--probe-targets", type=int, default=PROBE_TARGETS,
                        help="addresses probed across the block, each every 1 ms (at least 8)")
    parser.add_argument("--no-realtime-probe", dest="realtime", action="store_false",
                        help="run the probe without SCHED_FIFO")
    parser.add_argument("--timeout", type=float, default=120.0, help="per-run bound on the recovery, s")
    parser.add_argument("--setup-timeout", type=float, default=90.0,
                        help="bound on a master configuring the block at start-up, s")
    parser.add_argument("--output", type=Path, default=RESULTS / "failover.json")
    parser.add_argument("--no-plots", dest="plots", action="store_false",
                        help="draw no PNG (a timeline per case, the median run, and a summary chart)")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.keepalived_big_repeats, args.blocks = 1, 1, [256]
    if args.probe_targets < 8:
        parser.error("--probe-targets must be at least 8")

    fast, fast_tried = (None, {})
    if "keepalived-fast" in args.systems:
        fast, fast_tried = fast_interval_that_works()
        print(f"# keepalived-fast: advert_int {fast} (tried {json.dumps(fast_tried)})", flush=True)
    makers = {
        "dpagent": lambda block, l2: Dpagent(block, l2),
        "keepalived-fast": lambda block, l2: Keepalived("keepalived-fast", block, fast),
        "keepalived-default": lambda block, l2: Keepalived("keepalived-default", block, KEEPALIVED_DEFAULT_INTERVAL),
    }
    raw: dict = {}
    notes: list[str] = []
    settings_by_system: dict = {}
    for size in args.blocks:
        block = BLOCKS[size]
        for name, l2 in variants(args):
            system = makers[name](block, l2)
            settings_by_system[name] = system.settings
            repeats = args.keepalived_big_repeats if (size > 256 and name != "dpagent") else args.repeats
            setup_failed: list[dict] | None = None
            for heartbeat in args.heartbeats:
                for case in args.cases:
                    key = f"{name}/{l2}/{heartbeat}/{size}/{case}"
                    if setup_failed is not None:
                        # The set-up is the master alone configuring the block, before any heartbeat or
                        # failure: it cannot go otherwise for another case or topology.
                        raw[key] = setup_failed
                        continue
                    raw[key] = []
                    pictures: list[tuple[Run, Picture]] = []
                    for _ in range(repeats):
                        started = time.monotonic()
                        try:
                            run, picture = one_run(system, block, heartbeat, case, args.timeout,
                                                   args.setup_timeout, args.probe_targets, args.realtime)
                            pictures.append((run, picture))
                        except SetupTimeout as exc:
                            run = Run(error=f"set-up: {exc}")
                        run.steps["wall_s"] = time.monotonic() - started
                        raw[key].append(run.__dict__)
                        print(f"# {key}: {summary(run)}", flush=True)
                        if run.error and run.error.startswith("set-up") and size > 256:
                            # The master could not even configure the block: the backup has the same work to
                            # do at failover, so further attempts would only repeat the set-up.
                            break
                    if args.plots and (drawn := draw_median_run(key, pictures, case)):
                        print(f"# {key}: timeline {drawn}", flush=True)
                    if size > 256 and name != "dpagent" and raw[key] and all(r["error"] for r in raw[key]):
                        notes.append(f"{name} at {size} addresses: {raw[key][0]['error']} (set-up measured once, "
                                     f"{heartbeat} topology, {case}; it is the same for every case and topology)")
                        setup_failed = raw[key]

    figures = Figures()
    for note in notes:
        print(f"# note: {note}")
    report(figures, raw, args)
    settings = {
        "repeats": args.repeats,
        "keepalived_big_repeats": args.keepalived_big_repeats,
        "blocks": {size: BLOCKS[size] for size in args.blocks},
        "systems": args.systems,
        "heartbeats": args.heartbeats,
        "cases": args.cases,
        "l2": args.l2,
        "probe": {"interval_ms_per_address": 1, "targets": args.probe_targets,
                  "targets_include": "first and last usable address, the rest evenly between",
                  "timestamps": "kernel receive time (SO_TIMESTAMPNS)", "realtime": args.realtime,
                  "warmup_s": WARMUP_S, "settle_s": SETTLE_S},
        "outage": "per address: longest silence from its last reply before the failure to its first reply "
                  "from the new holder; stat first/median/worst over the addresses, then the median over runs",
        "timeout_s": args.timeout,
        "setup_timeout_s": args.setup_timeout,
        "keepalived_fast_tried": fast_tried,
        "system_settings": settings_by_system,
        "quick": args.quick,
    }
    write_result(args.output, "failover", settings, figures, raw, notes=notes)
    if args.plots:
        print(f"# summary chart {draw_summary(args.output.with_name('failover-summary.png'), figures)}")
    return 0


def variants(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(system, L2 mode) pairs: dpagent in each mode asked for, keepalived with its GARPs."""
    return [(name, l2) for name in args.systems for l2 in (args.l2 if name == "dpagent" else ["garp"])]


def summary(run: Run) -> str:
    if run.error:
        return f"error {run.error}"
    bound = f" (timed out: {run.unanswered_targets} addresses never back, lower bounds)" if run.timed_out else ""
    stats = ", ".join(f"{stat} {run.outage_ms[stat]:.1f}" for stat in STATS)
    where = ""
    if "detect_ms" in run.steps:
        steps = ", ".join(f"{name} at {s['start']:.1f} took {s['took']:.1f}" for name, s in run.steps["steps_ms"].items())
        where = f"; detected at {run.steps['detect_ms']:.1f} ms ({run.steps['reason']}); {steps}"
    return (f"outage ms {stats}{bound}; dual answer {run.dual_answer}; probe max send gap "
            f"{run.probe_max_send_gap_ms:.1f} ms{where}; set-up {run.steps.get('setup_s', 0):.1f} s")


def report(figures: Figures, raw: dict, args: argparse.Namespace) -> None:
    for size in args.blocks:
        for heartbeat in args.heartbeats:
            for case in args.cases:
                worst: dict[tuple[str, str], tuple[float | None, bool]] = {}
                for name, l2 in variants(args):
                    runs = [Run(**r) for r in raw.get(f"{name}/{l2}/{heartbeat}/{size}/{case}", [])]
                    measured = [r for r in runs if not r.error]
                    labels = {"system": name, "l2": l2, "case": case, "block": size, "heartbeat": heartbeat}
                    if not measured:
                        # Only the worst address has a bound then: the first probed address may come back early
                        # (it is among the first the backup adds), the last one cannot.
                        bound = setup_bound_ms(runs, args)
                        if bound:
                            figures.add("failover_outage_ms", {**labels, "stat": "worst"}, bound, "ms",
                                        lower_bound=True)
                            worst[(name, l2)] = (bound, True)
                        continue
                    for stat in STATS:
                        value, lower = median_of([(r.outage_ms[stat], r.lower_bound[stat]) for r in measured])
                        figures.add("failover_outage_ms", {**labels, "stat": stat}, value, "ms", lower_bound=lower)
                        if stat == "worst":
                            worst[(name, l2)] = (value, lower)
                    figures.add("failover_dual_answer_runs", labels, sum(r.dual_answer for r in measured),
                                f"runs of {len(measured)}")
                    detect = [r.steps["detect_ms"] for r in measured if "detect_ms" in r.steps]
                    if detect:
                        figures.add("failover_detect_ms", labels, statistics.median(detect), "ms")
                        beyond = [r.outage_ms["worst"] - r.steps["detect_ms"] for r in measured if "detect_ms" in r.steps]
                        figures.add("failover_worst_after_detect_ms", labels, statistics.median(beyond), "ms")
                    announce = [r.steps["steps_ms"][f"announce:{ANNOUNCE_BLOCK}"]["took"] for r in measured
                                if f"announce:{ANNOUNCE_BLOCK}" in r.steps.get("steps_ms", {})]
                    if announce:
                        figures.add("failover_announce_ms", labels, statistics.median(announce), "ms")
                    gaps = [r.steps["worst_advert_gap_ms"] for r in measured if r.steps.get("worst_advert_gap_ms")]
                    if gaps:
                        figures.add("failover_advert_gap_max_ms", labels, max(gaps), "ms")
                for (name, l2), ours in worst.items():
                    if name != "dpagent":
                        continue
                    for rival in ("keepalived-fast", "keepalived-default"):
                        theirs = worst.get((rival, "garp"))
                        if theirs and theirs[0] and ours[0] and not ours[1]:
                            figures.add("failover_ratio", {"case": case, "block": size, "heartbeat": heartbeat,
                                                           "l2": l2, "vs": rival, "stat": "worst"},
                                        theirs[0] / ours[0], "x", lower_bound=theirs[1])


def setup_bound_ms(runs: list[Run], args: argparse.Namespace) -> float | None:
    """A master that could not configure the block within the set-up bound: the backup, which has the
    same addresses to add at failover, cannot have them all back sooner."""
    if runs and all(r.error and r.error.startswith("set-up") for r in runs):
        return args.setup_timeout * 1000
    return None


if __name__ == "__main__":
    sys.exit(main())
