"""The agent as systemd runs it: notify protocol, watchdog pings and reload, on a real run.

The test plays systemd: it binds the AF_UNIX datagram socket that NOTIFY_SOCKET
names (a path in the lab directory, since abstract sockets belong to a network
namespace) and starts the agent with WATCHDOG_USEC set, as `lab.start_agent`
does but with that environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.dataplane.addresses import DPAGENT_PROTO
from agent.lab import BLOCK_V4, KEY_HEX, Lab
from waiting import wait_for

WATCHDOG_USEC = 200_000  # systemd's WatchdogSec=200ms: the agent pings every 100 ms
NEW_KEY_HEX = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
EXTRA_BLOCK = """
[[block]]
name = "extra"
interface = "ext0"
addresses = ["203.0.113.77"]
"""


class NotifyListener:
    """The service manager's end of NOTIFY_SOCKET: records every message with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self.sock.close()

    def snapshot(self) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, name: str, start: int = 0, timeout: float = 5.0) -> int:
        """Index of the first message from `start` on that carries field `name`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, (_at, fields) in enumerate(self.snapshot()[start:], start):
                if name in fields:
                    return index
            time.sleep(0.01)
        raise TimeoutError(f"no {name} within {timeout} s; got {[f for _, f in self.snapshot()[start:]]}")

    def count(self, name: str, since: float) -> int:
        return sum(1 for at, fields in self.snapshot() if at >= since and name in fields)


@pytest.fixture
def listener(lab):
    notify = NotifyListener(lab.dir / "notify.sock")
    yield notify
    notify.close()


def start_under_systemd(lab: Lab, node: int, listener: NotifyListener) -> subprocess.Popen:
    """lab.start_agent, with the environment systemd gives a Type=notify service with WatchdogSec."""
    env = {**os.environ, "NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    out = open(lab.dir / f"fw{node}.log", "ab")
    proc = lab.spawn(f"fw{node}", [sys.executable, "-m", "agent.runtime.main", "-c", str(lab.write_config(node))],
                     stdout=out, stderr=subprocess.STDOUT, env=env)
    out.close()
    lab.agents[node] = proc
    return proc


def agentctl(lab: Lab, node: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", "-s", lab.socket_path(node), *args],
                          capture_output=True, text=True, timeout=10)


def local_routes(lab: Lab, node: int) -> set[str]:
    """Destinations of dpagent's AnyIP routes in fw<node>'s kernel."""
    out = lab.exec(f"fw{node}", ["ip", "-j", "route", "show", "table", "local", "proto", str(DPAGENT_PROTO)]).stdout
    return {route["dst"] for route in json.loads(out or "[]")}



def reloads_ok(lab: Lab, node: int, count: int) -> dict:
    return wait_for(lambda: (s := lab.status(node)) and s["reloads"]["ok"] >= count and s,
                      what=f"fw{node} reloaded {count} time(s)")


def transitions(lab: Lab, node: int) -> list[tuple]:
    return [(t["old"], t["new"], t["reason"], t["at"]) for t in lab.status(node)["transitions"]]


def block_held(status: dict, name: str) -> bool | None:
    return next((b["held"] for b in status["blocks"] if b["name"] == name), None)


def test_ready_watchdog_reload_and_stop_notifications(lab, listener):
    proc = start_under_systemd(lab, 1, listener)
    ready = listener.wait_for("READY", timeout=10)
    fields = listener.snapshot()[ready][1]
    assert fields["READY"] == "1"
    assert fields["STATUS"].endswith("started")
    # The control socket answers once READY was sent: systemd may start dependants now.
    assert lab.status(1) is not None

    # Pings every WATCHDOG_USEC/2 = 100 ms from the event loop: about 10 a second.
    since = time.monotonic()
    time.sleep(1.0)
    pings = listener.count("WATCHDOG", since)
    assert 5 <= pings <= 30, pings

    mark = len(listener.snapshot())
    os.kill(proc.pid, signal.SIGHUP)
    reloading = listener.wait_for("RELOADING", start=mark)
    again = listener.wait_for("READY", start=reloading + 1)
    assert "reloaded" in listener.snapshot()[again][1]["STATUS"]
    assert lab.status(1)["reloads"] == {"ok": 1, "failed": 0}

    mark = len(listener.snapshot())
    os.kill(proc.pid, signal.SIGTERM)
    listener.wait_for("STOPPING", start=mark)
    assert proc.wait(timeout=15) == 0


def test_key_rotation_on_reload_keeps_the_pair_together(lab):
    fw1 = lab.start_agent(1)
    lab.wait_state(1, "MASTER")
    fw2 = lab.start_agent(2)
    lab.wait_master_seen(2, 1)
    before = {n: transitions(lab, n) for n in (1, 2)}

    # Step 1: both sign with the new key and still accept the old one.
    for node, proc in ((1, fw1), (2, fw2)):
        (lab.dir / f"fw{node}.key").write_text(f"2 {NEW_KEY_HEX}\n1 {KEY_HEX}\n")
    for proc in (fw1, fw2):
        os.kill(proc.pid, signal.SIGHUP)
    for node in (1, 2):
        reloads_ok(lab, node, 1)
    # Step 2: fw2 drops the old key; fw1's frames still pass only if fw1 signs with the new one.
    (lab.dir / "fw2.key").write_text(f"2 {NEW_KEY_HEX}\n")
    os.kill(fw2.pid, signal.SIGHUP)
    reloads_ok(lab, 2, 2)
    drops = {n: lab.status(n)["node"]["drops"].get("auth", 0) for n in (1, 2)}

    time.sleep(1.0)
    for node in (1, 2):
        status = lab.status(node)
        assert status["node"]["drops"].get("auth", 0) == drops[node], f"fw{node} drops frames after rotation"
        assert transitions(lab, node) == before[node], f"fw{node} changed state during rotation"
        assert [p["node_id"] for p in status["node"]["peers"]] == [3 - node]
    assert lab.state(1) == "MASTER" and lab.state(2) == "BACKUP"


def test_block_added_and_removed_on_reload_while_master(lab):
    lab.start_agent(1)
    lab.wait_state(1, "MASTER")
    wait_for(lambda: local_routes(lab, 1) == {BLOCK_V4}, what="block ext in the kernel")
    config = lab.dir / "fw1.toml"
    original = config.read_text()

    config.write_text(original + EXTRA_BLOCK)
    done = agentctl(lab, 1, "reload")
    assert done.returncode == 0, done.stderr
    status = wait_for(lambda: (s := lab.status(1)) and block_held(s, "extra") and s, what="extra held")
    assert block_held(status, "ext")
    assert local_routes(lab, 1) == {BLOCK_V4, "203.0.113.77"}

    config.write_text(original)
    done = agentctl(lab, 1, "reload")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: local_routes(lab, 1) == {BLOCK_V4}, what="extra released")
    status = lab.status(1)
    assert [b["name"] for b in status["blocks"]] == ["ext"] and block_held(status, "ext")
    assert status["node"]["state"]["name"] == "MASTER"
    # Each reload is an entry of its own that touched the extra block only.
    reloads = [t for t in status["transitions"] if t["reason"] == "reload"]
    assert [(t["old"], t["new"]) for t in reloads] == [("MASTER", "MASTER")] * 2
    assert [[step["name"] for step in t["steps"]] for t in reloads] == [
        ["open-gate:extra", "take:extra", "announce:extra"], ["release:extra", "close-gate:extra"]]
    assert all(step["ok"] for t in reloads for step in t["steps"])


def test_invalid_or_restart_only_changes_are_refused_and_nothing_changes(lab):
    proc = lab.start_agent(1)
    lab.wait_state(1, "MASTER")
    wait_for(lambda: local_routes(lab, 1) == {BLOCK_V4}, what="block ext in the kernel")
    config = lab.dir / "fw1.toml"
    original = config.read_text()

    config.write_text(original.replace("dead_multiplier = 3", "dead_multiplier = 99\nbogus = 1"))
    done = agentctl(lab, 1, "reload")
    assert done.returncode == 1
    assert f"{config}: node.dead_multiplier = 99:" in done.stderr
    assert f"{config}: node.bogus = 1:" in done.stderr

    config.write_text(original.replace("priority = 150", "priority = 10"))
    done = agentctl(lab, 1, "reload")
    assert done.returncode == 1
    assert "node changed" in done.stderr and "need a restart" in done.stderr

    status = lab.status(1)
    assert proc.poll() is None
    assert status["reloads"] == {"ok": 0, "failed": 2}
    assert status["node"]["priority"] == 150
    assert status["node"]["state"]["name"] == "MASTER" and block_held(status, "ext")
    assert local_routes(lab, 1) == {BLOCK_V4}
    # A valid file afterwards is taken again: the refusals left the agent able to reload.
    config.write_text(original)
    assert agentctl(lab, 1, "reload").returncode == 0
    assert lab.status(1)["reloads"] == {"ok": 1, "failed": 2}


UNIT = Path(__file__).parents[2] / "packaging" / "dpagent.service"
NOBODY = 65534


def unit_capabilities() -> list[str]:
    """The unit's AmbientCapabilities, as setpriv spells them (net_admin, ...)."""
    lines = [line for line in UNIT.read_text().splitlines() if line.startswith("AmbientCapabilities=")]
    assert len(lines) == 1
    return [cap.removeprefix("CAP_").lower() for cap in lines[0].split("=", 1)[1].split()]


@pytest.mark.parametrize("l2", [{}, {"l2": "cluster-mac", "backend": "xdp"}], ids=["garp", "xdp"])
def test_the_units_capabilities_suffice_for_a_non_root_agent(lab, l2):
    """As the unit runs it: another user, only the unit's capabilities, no new privileges."""
    config = lab.write_config(1, **l2)
    for path in (lab.dir, lab.dir / "fw1.key"):
        os.chown(path, NOBODY, NOBODY)
    caps = ",".join(f"+{cap}" for cap in unit_capabilities())
    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--no-new-privs",
               f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}", f"--bounding-set=-all,{caps}", "--"]
    out = open(lab.dir / "fw1.log", "ab")
    proc = lab.spawn("fw1", [*setpriv, sys.executable, "-m", "agent.runtime.main", "-c", str(config)],
                     stdout=out, stderr=subprocess.STDOUT)
    out.close()
    lab.agents[1] = proc

    status = lab.wait_state(1, "MASTER")
    assert os.stat(lab.socket_path(1)).st_uid == NOBODY
    wait_for(lambda: local_routes(lab, 1) == {BLOCK_V4}, what="block taken by the non-root agent")
    if l2:
        # Loading the XDP program and its maps: CAP_BPF; attaching it: CAP_NET_ADMIN.
        status = wait_for(lambda: (s := lab.status(1)) and s["xdp"]["blocks"].get("ext", {}).get("attach_mode") and s,
                          what=f"XDP filter attached by the non-root agent (log: {(lab.dir / 'fw1.log').read_text()})")
    else:
        # Announcing uses the AF_PACKET socket: CAP_NET_RAW.
        status = wait_for(lambda: (s := lab.status(1)) and s["announce"]["frames_sent"] > 0 and s,
                          what="announcement sent")
        assert status["announce"]["send_errors"] == 0 and status["announce"]["last_error"] is None
    assert all(link["up"] and link["send_errors"] == 0 for link in status["links"])
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert local_routes(lab, 1) == set()


def syscall_set(name: str) -> set[str]:
    """The system calls of a systemd set such as @system-service, nested sets expanded."""
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        calls |= syscall_set(entry) if entry.startswith("@") else {entry}
    return calls


def unit_syscalls() -> set[str]:
    """What the unit's SystemCallFilter= lines allow, applied in order as systemd does
    once the first line made it an allow list: plain lines add, `~` lines remove."""
    allowed: set[str] = set()
    for line in UNIT.read_text().splitlines():
        if not line.startswith("SystemCallFilter="):
            continue
        value = line.split("=", 1)[1]
        calls: set[str] = set()
        for entry in value.removeprefix("~").split():
            calls |= syscall_set(entry) if entry.startswith("@") else {entry}
        allowed = allowed - calls if value.startswith("~") else allowed | calls
    return allowed


@pytest.mark.skipif(not (shutil.which("strace") and shutil.which("systemd-analyze")),
                    reason="needs strace and systemd-analyze")
@pytest.mark.parametrize("l2", [{}, {"l2": "cluster-mac", "backend": "xdp"}], ids=["garp", "xdp"])
def test_a_real_run_stays_inside_the_units_system_call_filter_and_wx_policy(lab, l2):
    """Start, take, announce (or load the XDP filter), add and remove a block, hear a peer, stop:
    all under strace."""
    config = lab.write_config(1, **l2)
    trace = lab.dir / "strace.txt"
    out = open(lab.dir / "fw1.log", "ab")
    tracer = lab.spawn("fw1", ["strace", "-f", "-qq", "-o", str(trace),
                               sys.executable, "-m", "agent.runtime.main", "-c", str(config)],
                       stdout=out, stderr=subprocess.STDOUT)
    out.close()
    lab.wait_state(1, "MASTER", timeout=20)
    agent = int(Path(f"/proc/{tracer.pid}/task/{tracer.pid}/children").read_text().split()[0])
    original = config.read_text()
    config.write_text(original + EXTRA_BLOCK)
    assert agentctl(lab, 1, "reload").returncode == 0
    wait_for(lambda: "203.0.113.77" in local_routes(lab, 1), what="extra taken")
    config.write_text(original)
    os.kill(agent, signal.SIGHUP)
    wait_for(lambda: local_routes(lab, 1) == {BLOCK_V4}, what="extra released")
    lab.start_agent(2, lab.write_config(2, **l2))
    lab.wait_master_seen(2, 1)
    os.kill(agent, signal.SIGTERM)
    assert tracer.wait(timeout=30) == 0

    calls = [match.groups() for line in trace.read_text().splitlines()
             if (match := re.match(r"\d+\s+([a-z0-9_]+)\((.*)", line))]
    used = {name for name, _args in calls}
    assert {"socket", "sendto", "recvfrom"} <= used  # the trace saw the work happen
    assert ("bpf" in used) == bool(l2)
    assert used - unit_syscalls() == set()
    # MemoryDenyWriteExecute=yes refuses writable+executable mappings and making pages executable later.
    refused = [(name, args) for name, args in calls
               if (name == "mmap" and "PROT_WRITE" in args and "PROT_EXEC" in args)
               or (name in ("mprotect", "pkey_mprotect") and "PROT_EXEC" in args)]
    assert refused == []
