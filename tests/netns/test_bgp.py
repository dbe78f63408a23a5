"""Blocks announced over BGP through BIRD 2: real BIRDs, real BGP, real traffic through a router.

Each test builds agent.labbgp.BgpLab: two nodes, an upstream router and a
remote client behind it, a BIRD in each of the three routing namespaces. The
remote client reaches the block only through the router, so a test passes only
when the router's kernel routes the block to the node that holds it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator

import pytest

from agent.cli import request
from agent.labbgp import BIRD, BgpLab
from waiting import wait_for

pytestmark = pytest.mark.skipif(not os.path.exists(BIRD), reason="needs BIRD 2 (Debian bird2)")

V6 = "2001:db8:1::/124"


@pytest.fixture
def bgp_lab() -> Iterator[BgpLab]:
    with BgpLab() as lab:
        yield lab


def table_199(lab: BgpLab, node: int, family: str = "-4") -> str:
    return lab.exec(f"fw{node}", ["ip", family, "route", "show", "table", "199", "proto", "199"]).stdout


def cleanup(lab: BgpLab, node: int) -> None:
    """What the unit's ExecStopPost runs after every exit of the agent."""
    done = lab.exec(f"fw{node}", [sys.executable, "-m", "agent.runtime.main", "-c", str(lab.dir / f"fw{node}.toml"),
                                  "cleanup"], check=False)
    assert done.returncode == 0, done.stderr


def routed_to(lab: BgpLab, *nodes: int, timeout: float = 30.0) -> None:
    wanted = {lab.addresses[n].ext for n in nodes}
    wait_for(lambda: lab.next_hops() == wanted, timeout, f"the router's route to the block via {wanted}")


def start_pair(lab: BgpLab, **options) -> None:
    lab.start_all_birds()
    lab.start_agent(1, lab.write_config(1, **options))
    lab.wait_state(1, "MASTER", timeout=30)
    lab.start_agent(2, lab.write_config(2, **options))
    lab.wait_master_seen(2, 1, timeout=30)


def test_companion_routes_without_bird_are_a_warning_and_cleanup_removes_them(bgp_lab):
    """No BIRD at all: the agent takes the block anyway, says why it is not announced, and a
    SIGKILLed agent's routes in table 199 go with `dpagent cleanup`."""
    lab = bgp_lab
    lab.start_agent(1, lab.write_config(1, via="both", block_v6=V6))
    status = wait_for(lambda: (s := lab.wait_state(1, "MASTER", timeout=30)) and s["routes"]["bird"] and s,
                      30, "the BIRD check")
    assert not status["routes"]["bird"]["running"]
    assert "is BIRD running?" in status["routes"]["bird"]["problem"]
    wait_for(lambda: "unreachable 198.18.0.0/16" in table_199(lab, 1) and "2001:db8:1::/124" in table_199(lab, 1, "-6"),
             30, "both companion routes")
    assert lab.holds_block(1)
    lab.kill_agent(1, signal.SIGKILL)
    assert "198.18.0.0/16" in table_199(lab, 1)
    cleanup(lab, 1)
    assert table_199(lab, 1) == "" and table_199(lab, 1, "-6") == ""


def test_reachable_through_the_master_and_a_dead_master_moves_route_and_traffic(bgp_lab):
    lab = bgp_lab
    start_pair(lab)
    routed_to(lab, 1)
    assert lab.ping_block()
    bird = wait_for(lambda: (b := lab.status(1)["routes"]["bird"])["protocols"]["dpagent4"]["imported"] == 1 and b,
                    10, "fw1's BIRD learned the route")
    assert bird["running"] and bird["problem"] is None
    assert lab.status(2)["routes"]["announced"] == {}
    # Node death: agent, links and BIRD at once.
    lab.kill_node(1)
    lab.kill_bird("fw1")
    lab.wait_state(2, "MASTER", timeout=30)
    routed_to(lab, 2)
    assert wait_for(lambda: lab.ping_block(count=1), 30, "the block reachable through fw2")


def test_a_graceful_handover_moves_the_route(bgp_lab):
    lab = bgp_lab
    start_pair(lab)
    routed_to(lab, 1)
    assert request(lab.socket_path(1), "failover")["ok"]
    lab.wait_state(2, "MASTER", timeout=30)
    routed_to(lab, 2)
    assert wait_for(lambda: lab.ping_block(count=1), 30, "the block reachable through fw2")
    assert table_199(lab, 1) == ""


def test_a_killed_agent_is_withdrawn_by_cleanup(bgp_lab):
    """The agent alone dies, its node and BIRD live on: its route stays announced (the gate's
    lease has fenced the node) until ExecStopPost's cleanup, and then only the peer's is left."""
    lab = bgp_lab
    start_pair(lab)
    routed_to(lab, 1)
    killed = time.monotonic()
    lab.kill_agent(1, signal.SIGKILL)
    lab.wait_state(2, "MASTER", timeout=30)
    # Both announce now: the router merges the two paths.
    routed_to(lab, 1, 2)
    cleanup(lab, 1)
    routed_to(lab, 2, timeout=5)
    withdrawn = time.monotonic() - killed
    # The bound the README gives for a SIGKILL: ExecStopPost's cleanup, at once.
    assert withdrawn < 15, withdrawn
    assert wait_for(lambda: lab.ping_block(count=1), 30, "the block reachable through fw2")


def test_active_active_is_announced_by_every_owner(bgp_lab):
    lab = bgp_lab
    lab.start_all_birds()
    for node in (1, 2):
        lab.start_agent(node, lab.write_config(node, l2="cluster-mac", shared=True))
    routed_to(lab, 1, 2)
    assert lab.ping_block()
    for node in (1, 2):
        assert lab.status(node)["routes"]["announced"] == {"ext": 1}
