"""agent.netns.Namespaces, the one namespace manager: what close() leaves behind is nothing."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

from agent.netns import Namespaces, enter, ip
from waiting import wait_for


def netns_exists(name: str) -> bool:
    return name in ip("netns", "list").split()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left



def children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


def test_names_are_unique_lo_is_up_and_close_deletes_them():
    with Namespaces("dpt-mgr") as spaces:
        a, b = spaces.new("x"), spaces.new("x")
        assert a != b and a.startswith("dpt-mgr-x-")
        assert all(netns_exists(n) for n in (a, b))
        lo = json.loads(ip("-j", "link", "show", "lo", netns=a))[0]
        assert "UP" in lo["flags"]
    assert not netns_exists(a) and not netns_exists(b)


def test_close_runs_after_a_failure_and_ends_process_groups_pids_and_stragglers():
    spaces = Namespaces("dpt-mgr")
    with pytest.raises(RuntimeError, match="boom"):
        with spaces:
            name = spaces.new("procs")
            # A group leader with a child of its own: the group goes whole.
            leader = spaces.spawn(name, ["sh", "-c", "sleep 60 & exec sleep 60"])
            grandchild = wait_for(lambda: children_of(leader.pid))
            # A plain PID, not leading a group.
            plain = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "60"])
            spaces.register(plain.pid)
            # Started in the namespace but never registered: found there and ended by PID.
            stray = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "60"], start_new_session=True)
            # Only once it runs inside the namespace can close() find it there.
            wait_for(lambda: str(stray.pid) in subprocess.run(
                ["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split())
            raise RuntimeError("boom")
    plain.wait(timeout=5)
    stray.wait(timeout=5)
    assert wait_gone([leader.pid, *grandchild, plain.pid, stray.pid]) == []
    assert not netns_exists(name)


def test_veth_with_pinned_indexes_and_a_bridge_carry_traffic():
    with Namespaces("dpt-mgr") as spaces:
        a, sw, b = spaces.new("a"), spaces.new("sw"), spaces.new("b")
        spaces.veth(a, "e0", sw, "pa", index_a=4100, index_b=4300)
        spaces.veth(b, "e0", sw, "pb", index_a=4200, index_b=4400)
        spaces.bridge(sw, "br0", "pa", "pb", options=("mcast_snooping", "0"))
        assert json.loads(ip("-j", "link", "show", "e0", netns=a))[0]["ifindex"] == 4100
        assert json.loads(ip("-j", "link", "show", "pa", netns=sw))[0]["ifindex"] == 4300
        ip("addr", "add", "192.0.2.1/24", "dev", "e0", netns=a)
        ip("addr", "add", "192.0.2.2/24", "dev", "e0", netns=b)
        with enter(b):
            server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("192.0.2.2", 9999))
        server.settimeout(5)
        with enter(a):
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with server, client:
            client.sendto(b"hello", ("192.0.2.2", 9999))
            assert server.recvfrom(16)[0] == b"hello"
        # The thread is home again: the host has no such address.
        assert "192.0.2.1" not in ip("-o", "addr", "show")
