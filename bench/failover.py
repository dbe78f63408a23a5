"""Benchmark: failover outage of dpagent against keepalived (VRRPv3) in the same
lab, in the same run, for node death and for graceful failover, with blocks of
256 and 65,536 addresses.

A 1 ms ICMP probe from the client to 64 addresses spread over the block records
every reply with the MAC that sent it. The outage of a run is the gap between
the last reply of the old master and the first reply of the new one (labprobe's
`outage`); `failover_worst_gap_ms` is the longest silence of the reply stream
after the failure, and `failover_all_back_ms` the time until every probed address
answered again from the new master: with a block of thousands of addresses the
announcement reaches the probed addresses one after another, so these two show
what the first figure cannot. Every run builds a fresh lab (no neighbour entries
or addresses left over from the previous run).

keepalived holds the same addresses the classic way, one /32 per address in
`virtual_ipaddress` on ext0, VRRP on the heartbeat link hb0. Node death is
SIGKILL of the daemon's process group plus its links down (as for dpagent);
graceful is SIGTERM to keepalived's main process (it sends priority 0).
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

from agent.lab import Lab  # noqa: E402
from agent.labprobe import outage  # noqa: E402

BLOCKS = {256: "198.18.0.0/24", 65536: "198.18.0.0/16"}
CASES = ("kill", "graceful")
PROBE_TARGETS = 64
WARMUP_S = 1.0          # probe runs this long before the failure, so every target's neighbour entry is resolved
SETTLE_S = 1.0          # probe keeps running after recovery was seen, to catch a second answering node
DPAGENT_INTERVAL = 0.05  # the lab's default: detection 3 x 50 ms
KEEPALIVED_DEFAULT_INTERVAL = 1.0
KEEPALIVED_FAST_CANDIDATES = (0.05, 0.1)
VRID = 77


# --- the two systems -----------------------------------------------------------------------


class Dpagent:
    name = "dpagent"

    def __init__(self, block: str) -> None:
        self.block = block
        self.settings = {"advert_interval": DPAGENT_INTERVAL, "dead_multiplier": 3,
                         "heartbeat": "hb0+hb1 multicast", "preempt": False}

    def start(self, lab: Lab, timeout: float) -> None:
        lab.start_agent(1, lab.write_config(1, block=self.block, advert_interval=DPAGENT_INTERVAL))
        lab.wait_state(1, "MASTER", timeout=timeout)
        lab.start_agent(2, lab.write_config(2, block=self.block, advert_interval=DPAGENT_INTERVAL))
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
    def worst_advert_gap_ms(lab: Lab) -> float | None:
        """The new master's worst gap between two heartbeat frames sent since it took over:
        takeover work (routes, a /16 of announcements) must not delay the adverts."""
        status = lab.status(2)
        if not status:
            return None
        return status["transitions"][-1]["max_advert_gap_s"] * 1000


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
                "dont_track_primary": "set: the lab's hb0 is a direct veth, so node death takes the survivor's "
                                      "hb0 carrier down too and keepalived would go FAULT instead of taking "
                                      "over (over a switch the survivor's link stays up)",
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
    outage_ms: float | None = None
    worst_gap_ms: float | None = None
    all_back_ms: float | None = None
    dual_answer: bool = False
    timed_out: bool = False
    lost: int = 0
    unanswered_targets: int = 0
    error: str | None = None
    steps: dict = field(default_factory=dict)


def analyse(result: dict, fail_at: float, old_mac: str, new_mac: str, timed_out: bool, ended_at: float) -> Run:
    run = Run(timed_out=timed_out)
    new_replies = [(t, seq) for seq, t, mac in result["replies"] if t > fail_at and mac == new_mac]
    if not new_replies:
        before = [t for _, t, _ in result["replies"] if t <= fail_at]
        run.outage_ms = (ended_at - (before[-1] if before else fail_at)) * 1000
        run.timed_out = True
        run.unanswered_targets = len(result["targets"])
        return run
    gap = outage(result, fail_at, new_mac)
    run.outage_ms = gap.seconds * 1000
    run.worst_gap_ms = gap.worst_gap * 1000
    run.lost = gap.lost
    first_new = min(t for t, _ in new_replies)
    # Two nodes answering: the old master still replies after the new one has started to.
    run.dual_answer = any(mac == old_mac and t > first_new for _, t, mac in result["replies"])
    index_of = {seq: index for seq, _, index in result["sent"]}
    first_by_target: dict[int, float] = {}
    for t, seq in sorted(new_replies):
        first_by_target.setdefault(index_of[seq], t)
    run.unanswered_targets = len(result["targets"]) - len(first_by_target)
    if run.unanswered_targets:
        run.all_back_ms = (ended_at - fail_at) * 1000
        run.timed_out = True
    else:
        run.all_back_ms = (max(first_by_target.values()) - fail_at) * 1000
    return run


def one_run(system: Dpagent | Keepalived, block: str, case: str, timeout: float, setup_timeout: float) -> Run:
    with Lab() as lab:
        t0 = time.monotonic()
        system.start(lab, setup_timeout)
        steps = {"setup_s": time.monotonic() - t0}
        old_mac, new_mac = lab.mac("fw1", "ext0"), lab.mac("fw2", "ext0")
        probe = lab.start_probe(WARMUP_S + timeout + SETTLE_S + 5, block=block, count=PROBE_TARGETS)
        time.sleep(WARMUP_S)
        fail_at = system.fail(lab, case)
        recovered = system.wait_recovered(lab, timeout)
        steps["control_plane_recovered_s"] = time.time() - fail_at
        if recovered:
            time.sleep(SETTLE_S)
            if isinstance(system, Dpagent):
                steps["worst_advert_gap_ms"] = system.worst_advert_gap_ms(lab)
        ended_at = time.time()
        result = probe.finish(stop=True)
        run = analyse(result, fail_at, old_mac, new_mac, not recovered, ended_at)
        run.steps = steps
        return run


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


def median_of(runs: list[Run], attr: str) -> tuple[float | None, bool]:
    """The median and whether it is only a lower bound (a timed-out run at or below the median)."""
    values = sorted((getattr(r, attr), r.timed_out) for r in runs if getattr(r, attr) is not None)
    if not values:
        return None, False
    median = statistics.median(v for v, _ in values)
    return median, any(timed_out and v <= median for v, timed_out in values) or all(t for _, t in values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, the 256-address block only (smoke run)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keepalived-big-repeats", type=int, default=1,
                        help="repeats of keepalived with the 65,536-address block (each may take minutes)")
    parser.add_argument("--blocks", type=int, nargs="+", default=sorted(BLOCKS), choices=sorted(BLOCKS))
    parser.add_argument("--timeout", type=float, default=120.0, help="per-run bound on the recovery, s")
    parser.add_argument("--setup-timeout", type=float, default=90.0,
                        help="bound on a master configuring the block at start-up, s")
    parser.add_argument("--output", type=Path, default=RESULTS / "failover.json")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.keepalived_big_repeats, args.blocks = 1, 1, [256]

    fast, fast_tried = fast_interval_that_works()
    print(f"# keepalived-fast: advert_int {fast} (tried {json.dumps(fast_tried)})", flush=True)
    systems = {
        "dpagent": lambda block: Dpagent(block),
        "keepalived-fast": lambda block: Keepalived("keepalived-fast", block, fast),
        "keepalived-default": lambda block: Keepalived("keepalived-default", block, KEEPALIVED_DEFAULT_INTERVAL),
    }
    raw: dict = {}
    notes: list[str] = []
    settings_by_system: dict = {}
    for size in args.blocks:
        block = BLOCKS[size]
        for name, make in systems.items():
            system = make(block)
            settings_by_system[name] = system.settings
            repeats = args.keepalived_big_repeats if (size > 256 and name != "dpagent") else args.repeats
            for case in CASES:
                key = f"{name}/{size}/{case}"
                raw[key] = []
                for _ in range(repeats):
                    started = time.monotonic()
                    try:
                        run = one_run(system, block, case, args.timeout, args.setup_timeout)
                    except SetupTimeout as exc:
                        run = Run(error=f"set-up: {exc}")
                    run.steps["wall_s"] = time.monotonic() - started
                    raw[key].append(run.__dict__)
                    print(f"# {key}: {summary(run)}", flush=True)
                    if run.error and run.error.startswith("set-up") and size > 256:
                        # The master could not even configure the block: the backup has the same work to do
                        # at failover, so further attempts (and the other case) would only repeat the set-up.
                        break
                if raw[key] and all(r["error"] for r in raw[key]) and size > 256 and name != "dpagent":
                    notes.append(f"{name} at {size} addresses: {raw[key][0]['error']}")
                    for other in CASES:
                        raw.setdefault(f"{name}/{size}/{other}", raw[key])
                    break

    figures = Figures()
    for note in notes:
        print(f"# note: {note}")
    report(figures, raw, args)
    settings = {
        "repeats": args.repeats,
        "keepalived_big_repeats": args.keepalived_big_repeats,
        "blocks": {size: BLOCKS[size] for size in args.blocks},
        "probe": {"interval_ms": 1, "targets": PROBE_TARGETS, "warmup_s": WARMUP_S, "settle_s": SETTLE_S},
        "timeout_s": args.timeout,
        "setup_timeout_s": args.setup_timeout,
        "keepalived_fast_tried": fast_tried,
        "systems": settings_by_system,
        "quick": args.quick,
    }
    write_result(args.output, "failover", settings, figures, raw, notes=notes)
    return 0


def summary(run: Run) -> str:
    if run.error:
        return f"error {run.error}"
    bound = " (timed out, lower bound)" if run.timed_out else ""
    return (f"outage {run.outage_ms:.0f} ms, all back {run.all_back_ms or 0:.0f} ms{bound}, "
            f"dual answer {run.dual_answer}, lost {run.lost}, steps {json.dumps(run.steps)}")


def report(figures: Figures, raw: dict, args: argparse.Namespace) -> None:
    for size in args.blocks:
        for case in CASES:
            medians: dict[str, dict[str, tuple[float, bool]]] = {}
            for name in ("dpagent", "keepalived-fast", "keepalived-default"):
                runs = [Run(**r) for r in raw.get(f"{name}/{size}/{case}", [])]
                measured = [r for r in runs if not r.error]
                labels = {"system": name, "block": size}
                medians[name] = {}
                if not measured:
                    # Only the whole-block figure has a bound then: the first probed address may come back
                    # early (it is among the first the backup adds), the last one cannot.
                    bound = setup_bound_ms(runs, args)
                    if bound:
                        figures.add("failover_all_back_ms", {**labels, "case": case}, bound, "ms", lower_bound=True)
                        medians[name]["all_back"] = (bound, True)
                    continue
                value, lower = median_of(measured, "outage_ms")
                medians[name]["outage"] = (value, lower)
                figures.add(f"failover_{case}_ms", labels, value, "ms", lower_bound=lower)
                worst, worst_lower = median_of(measured, "worst_gap_ms")
                if worst is not None:
                    figures.add("failover_worst_gap_ms", {**labels, "case": case}, worst, "ms", lower_bound=worst_lower)
                back, back_lower = median_of(measured, "all_back_ms")
                if back is not None:
                    medians[name]["all_back"] = (back, back_lower)
                    figures.add("failover_all_back_ms", {**labels, "case": case}, back, "ms", lower_bound=back_lower)
                figures.add("failover_dual_answer_runs", {**labels, "case": case},
                            sum(r.dual_answer for r in measured), f"runs of {len(measured)}")
                gaps = [r.steps["worst_advert_gap_ms"] for r in measured if r.steps.get("worst_advert_gap_ms")]
                if gaps:
                    figures.add("failover_advert_gap_max_ms", {**labels, "case": case}, max(gaps), "ms")
            for metric in ("outage", "all_back"):
                ours = medians["dpagent"].get(metric)
                for name in ("keepalived-fast", "keepalived-default"):
                    theirs = medians[name].get(metric)
                    if ours and theirs and ours[0] and not ours[1]:
                        figures.add("failover_ratio", {"case": case, "block": size, "vs": name, "metric": metric},
                                    theirs[0] / ours[0], "x", lower_bound=theirs[1])


def setup_bound_ms(runs: list[Run], args: argparse.Namespace) -> float | None:
    """A master that could not configure the block within the set-up bound: the backup, which has the
    same addresses to add at failover, cannot have them all back sooner."""
    if runs and all(r.error and r.error.startswith("set-up") for r in runs):
        return args.setup_timeout * 1000
    return None


if __name__ == "__main__":
    sys.exit(main())
