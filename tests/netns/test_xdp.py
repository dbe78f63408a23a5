"""The XDP backend in the lab: cluster-mac active/passive with the filter at the driver.

Both nodes receive every frame to the cluster MAC; the XDP program on each
node's ext0 passes the owner's and drops the rest before the stack, with no
nft netdev filter loaded. A TCP connection shows the MAC rewrite makes frames
PACKET_HOST; the program's own counters, read from its maps by program id
(also after its agent died), show who dropped what and why.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.lab import CLUSTER_MAC, Lab
from test_shared_mac import BLOCK_V6, V4, V6, connect, start_servers
from scrape import samples
from waiting import wait_for

# The XDP program on an interface of the namespace, and its counters summed over all
# slots, read straight from the kernel: no agent needed.
READ_FILTER = """
import json, socket, sys
from agent.dataplane import bpf, xdp
there = bpf.query(socket.if_nametoindex(sys.argv[1]))
out = {"prog_id": there.prog_id, "mode": there.mode, "name": there.name, "counters": {}}
if there.name == bpf.FILTER_PROGRAM:
    fd = bpf.program_map_fd(there.prog_id, "dpagent_counters")
    for slot in range(xdp.lib.DP_MAX_BLOCKS + 1):
        for name, n in xdp.counters_of(fd, slot, bpf.possible_cpus()).items():
            out["counters"][name] = out["counters"].get(name, 0) + n
    bpf.close_fd(fd)
print(json.dumps(out))
"""


def xdp_on(lab: Lab, node: int) -> dict:
    return json.loads(lab.exec(f"fw{node}", [sys.executable, "-c", READ_FILTER, "ext0"]).stdout)


def start_pair(lab: Lab) -> None:
    for node in (1, 2):
        lab.start_agent(node, lab.write_config(node, block_v6=BLOCK_V6, l2="cluster-mac", backend="xdp"))
        if node == 1:
            lab.wait_state(1, "MASTER")
    lab.wait_master_seen(2, 1)


@pytest.mark.lab(heartbeat="switched")
def test_xdp_backend_serves_tcp_and_fails_over_after_a_kill(lab) -> None:
    start_pair(lab)
    start_servers(lab)
    for node in (1, 2):
        status = lab.status(node)
        # veth's native XDP would leave the rewritten frames PACKET_MULTICAST (agent.dataplane.xdp).
        assert status["xdp"]["attached"] == {"ext0": "generic"}
        assert {b["l2"]["backend"] for b in status["blocks"]} == {"xdp"}
        assert "netdev dpagent" not in lab.exec(f"fw{node}", ["nft", "list", "tables"]).stdout
        assert xdp_on(lab, node)["name"] == "dpagent_filter"
    assert lab.status(1)["xdp"]["blocks"]["ext"]["owned"] == 256
    assert lab.status(2)["xdp"]["blocks"]["ext"]["owned"] == 0

    lab.resolve(V4 + V6)
    assert wait_for(lambda: connect(lab, V4[1])) == "fw1"
    assert wait_for(lambda: connect(lab, V6[1])) == "fw1"
    # The backup saw the same frames and dropped them at the driver.
    assert xdp_on(lab, 2)["counters"]["dropped"] > 0
    assert xdp_on(lab, 1)["counters"]["passed"] > 0

    lab.kill_node(1)
    lab.wait_state(2, "MASTER", timeout=10)
    assert wait_for(lambda: connect(lab, V4[1])) == "fw2"
    assert wait_for(lambda: connect(lab, V6[1])) == "fw2"
    status = lab.status(2)
    assert status["xdp"]["blocks"]["ext"]["owned"] == 256
    assert status["xdp"]["blocks"]["ext"]["packets"]["passed"] > 0
    metrics = samples(lab.exec("fw2", [sys.executable, "-m", "agent.cli", "-s", lab.socket_path(2), "metrics"]).stdout)
    assert metrics[("dpagent_xdp_attached", (("interface", "ext0"), ("mode", "generic")))] == 1
    assert metrics[("dpagent_xdp_packets_total", (("block", "ext"), ("result", "passed")))] > 0


@pytest.mark.lab(heartbeat="switched")
def test_the_xdp_lease_fences_a_sigkilled_agents_node(lab) -> None:
    """The dead agent's program stays attached; its lease runs out and it drops the
    block's frames itself, counted as expired, while the new master serves them."""
    start_pair(lab)
    fw2 = lab.mac("fw2", "ext0")
    lab.resolve(V4[:1])
    lab.kill_agent(1, signal.SIGKILL)
    lab.wait_state(2, "MASTER", timeout=10)
    assert lab.holds_block(1)

    def only_fw2() -> bool:
        return {mac for _, _, mac in lab.start_probe(0.5).finish()["replies"]} == {fw2}

    wait_for(only_fw2)
    assert only_fw2()
    left = xdp_on(lab, 1)
    assert left["name"] == "dpagent_filter" and left["counters"]["expired"] > 0, left


def test_a_restart_replaces_and_cleanup_removes_a_crashed_agents_program(lab) -> None:
    config = lab.write_config(1, block_v6=BLOCK_V6, l2="cluster-mac", backend="xdp")
    lab.start_agent(1, config)
    lab.wait_state(1, "MASTER")
    first = wait_for(lambda: xdp_on(lab, 1)["prog_id"])
    lab.kill_agent(1, signal.SIGKILL)
    assert xdp_on(lab, 1)["prog_id"] == first

    lab.start_agent(1, config)
    lab.wait_state(1, "MASTER")
    second = xdp_on(lab, 1)
    assert second["prog_id"] not in (0, first) and second["mode"] == "generic"
    assert lab.status(1)["xdp"]["attached"] == {"ext0": "generic"}

    lab.kill_agent(1, signal.SIGKILL)
    done = lab.exec("fw1", [sys.executable, "-m", "agent.runtime.main", "-c", str(config), "cleanup"], check=False)
    assert done.returncode == 0, done.stderr
    assert xdp_on(lab, 1)["prog_id"] == 0
    assert "dpagent" not in lab.exec("fw1", ["nft", "list", "tables"]).stdout


def test_a_stopped_agent_detaches_its_program(lab) -> None:
    lab.start_agent(1, lab.write_config(1, l2="cluster-mac", backend="xdp"))
    lab.wait_state(1, "MASTER")
    assert wait_for(lambda: xdp_on(lab, 1)["prog_id"])
    lab.kill_agent(1, signal.SIGTERM)
    assert lab.agents[1].returncode == 0
    assert xdp_on(lab, 1)["prog_id"] == 0
    listed = lab.exec("fw1", ["cat", "/proc/net/dev_mcast"]).stdout
    assert CLUSTER_MAC.replace(":", "") not in listed


@pytest.fixture(scope="module")
def other_program(tmp_path_factory) -> Path:
    """Someone else's XDP program: bench/xdp_pass.bpf.c, compiled here."""
    out = tmp_path_factory.mktemp("xdp") / "xdp_pass.bpf.o"
    subprocess.run(["clang", "-target", "bpf", "-O2", "-g", "-I/usr/include/x86_64-linux-gnu", "-c",
                    str(Path(__file__).parents[2] / "bench" / "xdp_pass.bpf.c"), "-o", str(out)], check=True)
    return out


def test_someone_elses_xdp_program_is_left_alone(lab, other_program: Path) -> None:
    """An operator's own XDP program on the block's interface: the agent reports the block's
    filter as a problem and does not replace it; cleanup does not remove it either."""
    lab.exec("fw1", ["ip", "link", "set", "ext0", "xdpgeneric", "obj", str(other_program), "sec", "xdp"])
    config = lab.write_config(1, l2="cluster-mac", backend="xdp")
    lab.start_agent(1, config)
    problems = wait_for(lambda: (lab.status(1) or {}).get("xdp", {}).get("problems"))
    assert "of someone else" in problems["ext"]
    assert xdp_on(lab, 1)["name"] == "xdp_pass_only"
    lab.kill_agent(1, signal.SIGKILL)
    lab.exec("fw1", [sys.executable, "-m", "agent.runtime.main", "-c", str(config), "cleanup"])
    assert xdp_on(lab, 1)["name"] == "xdp_pass_only"


@pytest.mark.lab(heartbeat="switched")
def test_a_held_block_grown_by_a_reload_is_served_through_the_filter(lab) -> None:
    """198.18.128.0/17 joins a held block: the XDP step's adjust puts it in the trie and the
    /16 index, or its frames would pass unrewritten, as multicast, and TCP would drop them."""
    lab.start_agent(1, lab.write_config(1, block="198.18.0.0/17", l2="cluster-mac", backend="xdp"))
    lab.wait_state(1, "MASTER")
    start_servers(lab)
    lab.resolve(["198.18.0.7"])
    assert wait_for(lambda: connect(lab, "198.18.0.7")) == "fw1"

    lab.write_config(1, block="198.18.0.0/16", l2="cluster-mac", backend="xdp")
    done = lab.exec("fw1", [sys.executable, "-m", "agent.cli", "-s", lab.socket_path(1), "reload"])
    assert "reloaded" in done.stdout
    lab.resolve(["198.18.200.1"])
    assert wait_for(lambda: connect(lab, "198.18.200.1")) == "fw1"
    steps = {s["name"] for t in lab.status(1)["transitions"] for s in t["steps"]}
    assert any(name.startswith("xdp-members") for name in steps), steps
