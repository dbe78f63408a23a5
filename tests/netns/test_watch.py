"""`agentctl status --watch` against agents in the lab: it follows a failover as it happens,
redraws in place on a terminal, ends with 0 on Ctrl-C and with 3 once the agent is gone."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading

from agent.cli import CLEAR_BELOW, EXIT_UNREACHABLE, HOME
from agent.lab import Lab


def start_pair(lab: Lab) -> None:
    lab.start_agent(1)
    lab.wait_state(1, "MASTER")
    lab.start_agent(2)
    lab.wait_master_seen(2, 1)


def watch(lab: Lab, node: int, *options: str, stdout: int | None = subprocess.PIPE) -> subprocess.Popen:
    argv = [sys.executable, "-m", "agent.cli", "-s", lab.socket_path(node), *options]
    proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, text=True)
    lab.netns.register(proc)
    return proc


def reader(read) -> queue.Queue:
    """What `read()` returns, chunk by chunk as it comes, in a queue, until it returns nothing
    or fails (a terminal whose other end closed)."""
    found: queue.Queue = queue.Queue()

    def pump() -> None:
        try:
            while chunk := read():
                found.put(chunk)
        except OSError:
            return

    threading.Thread(target=pump, daemon=True).start()
    return found


def next_until(found: queue.Queue, check, what: str, timeout: float = 20.0):
    """Items of the queue until one passes `check`; that one."""
    try:
        while True:
            item = found.get(timeout=timeout)
            if check(item):
                return item
    except queue.Empty:
        raise AssertionError(f"{what}: not within {timeout:g} s") from None


def test_the_json_stream_follows_a_failover_and_ctrl_c_exits_0(lab):
    start_pair(lab)
    proc = watch(lab, 2, "-j", "status", "--watch", "--interval", "0.05")
    lines = reader(proc.stdout.readline)
    first = json.loads(next_until(lines, lambda line: line.strip(), "a first status"))
    assert first["node"]["state"]["name"] == "BACKUP" and first["node"]["master"] == 1
    lab.kill_node(1)
    took = next_until(lines, lambda line: json.loads(line)["node"]["state"]["name"] == "MASTER", "fw2 MASTER")
    assert json.loads(took)["transitions"][-1]["new"] == "MASTER"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0


def test_a_terminal_is_redrawn_in_place_and_a_lost_agent_exits_3(lab):
    start_pair(lab)
    main, terminal = os.openpty()
    try:
        proc = watch(lab, 2, "status", "--watch", "--interval", "0.1", stdout=terminal)
        screen = reader(lambda: os.read(main, 4096).decode())
        seen: list[str] = []
        # Two frames, each drawn from the top of the screen over the last.
        next_until(screen, lambda chunk: seen.append(chunk) or "".join(seen).count(HOME) >= 2, "two frames")
        frames = "".join(seen).split(HOME)[1:]
        assert "state BACKUP (1)" in frames[0] and frames[0].endswith(CLEAR_BELOW)
        lab.kill_agent(2)
        assert proc.wait(timeout=20) == EXIT_UNREACHABLE
        assert "cannot reach dpagent" in proc.stderr.read()
    finally:
        os.close(terminal)
        os.close(main)
