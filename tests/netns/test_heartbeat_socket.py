"""Heartbeat sockets against a local squatter: an unprivileged process on fw2 that wants the port.

Before the agent starts, a squatter can hold the port (any user may bind a port
above 1024): fw2's heartbeat ports must then count as closed, so fw2 goes FAULT
instead of taking over from a master it cannot hear, and they must open by
themselves once the squatter is gone. While the agent runs, nobody can bind the
port at all, so a squatter never gets a frame and nothing fails over.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from agent.lab import HB_GROUP, HB_GROUP_V6, HB_PORT, NODES, Lab

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
# The system's python: nobody cannot reach the test's interpreter under /root.
PYTHON = "/usr/bin/python3"

# Binds every (host, scope interface, option) of argv[1] on HB_PORT, reports each result
# ("bound" or the errno's name), then counts what arrives until its stdin closes.
SQUATTER = """
import errno, json, select, socket, sys
port, wanted = int(sys.argv[2]), json.loads(sys.argv[1])
options = {"reuseaddr": socket.SO_REUSEADDR, "reuseport": socket.SO_REUSEPORT}
held, results = [], []
for host, scope, option in wanted:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if option == "device":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, scope.encode())
        elif option:
            sock.setsockopt(socket.SOL_SOCKET, options[option], 1)
        index = socket.if_nametoindex(scope) if scope else 0
        sock.bind((host, port) if family == socket.AF_INET else (host, port, 0, index))
        held.append(sock)
        results.append("bound")
    except OSError as exc:
        sock.close()
        results.append(errno.errorcode.get(exc.errno, str(exc)))
print(json.dumps(results), flush=True)
received = 0
while True:
    ready = select.select([sys.stdin] + held, [], [])[0]
    if sys.stdin in ready:
        break
    for sock in ready:
        sock.recv(2048)
        received += 1
print(received, flush=True)
"""


class Squatter:
    """The squatter in fw2's namespace, as nobody."""

    def __init__(self, lab: Lab, binds: list[tuple[str, str | None, str | None]]) -> None:
        self.proc = lab.spawn("fw2", [*NOBODY, PYTHON, "-c", SQUATTER, json.dumps(binds), str(HB_PORT)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line, "the squatter did not start"
        self.results = json.loads(line)

    def leave(self) -> int:
        """End it (close its stdin) and return how many datagrams it received."""
        self.proc.stdin.close()
        received = int(self.proc.stdout.readline())
        self.proc.wait(timeout=5)
        return received


def start_pair(lab: Lab, heartbeat: str) -> None:
    lab.start_agent(1, lab.write_config(1, heartbeat=heartbeat))
    lab.wait_state(1, "MASTER")
    lab.start_agent(2, lab.write_config(2, heartbeat=heartbeat))
    lab.wait_master_seen(2, 1)


def links(status: dict) -> dict[str, dict]:
    return {link["name"]: link for link in status["links"]}


def wait_status(lab: Lab, node: int, ready, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = lab.status(node)
        if status and ready(status):
            return status
        time.sleep(0.05)
    raise TimeoutError(f"fw{node}: not as expected within {timeout} s; last status links "
                       f"{status and status['links']}, state {status and status['node']['state']}")


def test_a_port_squatted_before_start_keeps_fw2_from_taking_over_until_it_is_free(lab):
    fw2 = NODES[2]
    squatter = Squatter(lab, [(fw2.hb0, None, None), (fw2.hb1, None, None)])
    assert squatter.results == ["bound", "bound"]
    lab.start_agent(1, lab.write_config(1, heartbeat="unicast"))
    lab.wait_state(1, "MASTER")
    lab.start_agent(2, lab.write_config(2, heartbeat="unicast"))

    # Both ports closed, with the reason; fw2 hears nothing, and says so instead of taking over.
    status = wait_status(lab, 2, lambda s: all(not link["up"] and "Address already in use" in link["last_error"]
                                               for link in s["links"]))
    assert sorted(links(status)) == ["hb0", "hb1"]
    deadline = time.monotonic() + 1.0  # many dead intervals (0.15 s)
    while time.monotonic() < deadline:
        assert lab.state(2) == "FAULT"
        assert lab.state(1) == "MASTER"
        assert not lab.holds_block(2)
        time.sleep(0.05)

    squatter.leave()
    # The ports open on their next retry (at most 5 s apart) and fw2 follows fw1.
    status = wait_status(lab, 2, lambda s: all(link["up"] and not link["last_error"] for link in s["links"]))
    lab.wait_master_seen(2, 1, timeout=10)
    assert lab.state(1) == "MASTER"
    assert lab.holds_block(1) and not lab.holds_block(2)
    assert "MASTER" not in [t["new"] for t in lab.status(2)["transitions"]]


# What a squatter tries while the agents run: the wildcard and the link's own address
# (for a group: the group), with each option that could let it share the port.
OPTIONS = [None, "reuseaddr", "reuseport", "device"]
SQUATS = {
    "unicast": [("0.0.0.0", "hb0"), (NODES[2].hb0, "hb0"), (NODES[2].hb1, "hb1")],
    "group": [("0.0.0.0", "hb0"), (HB_GROUP, "hb0"), (HB_GROUP, "hb1")],
    "group6": [("::", "hb0"), (HB_GROUP_V6, "hb0"), (HB_GROUP_V6, "hb1")],
}


@pytest.mark.parametrize("heartbeat", sorted(SQUATS))
def test_a_squatter_during_a_run_gets_nothing_and_nothing_fails_over(lab, heartbeat):
    start_pair(lab, heartbeat)
    changes = lab.status(2)["state_changes"]
    # A link-local group needs its interface as the scope, whatever the option.
    binds = [(host, scope if option == "device" or host.startswith("ff02") else None, option)
             for host, scope in SQUATS[heartbeat] for option in OPTIONS]
    squatter = Squatter(lab, binds)
    time.sleep(1.0)
    received = squatter.leave()

    assert squatter.results == ["EADDRINUSE"] * len(binds), list(zip(binds, squatter.results))
    assert received == 0
    status = lab.status(2)
    assert status["node"]["state"]["name"] == "BACKUP" and status["node"]["master"] == 1
    assert status["state_changes"] == changes
    assert all(link["up"] for link in status["links"])
    assert lab.state(1) == "MASTER"
