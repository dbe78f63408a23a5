"""Connection state survives a failover: 50 TCP connections and a UDP flow, forwarded and
SNATed by a strict stateful firewall pair, go on through the backup when the master dies.

The same run without the sync shows the flows stall, so the test proves what it claims.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time

import pytest

from agent.cli import request
from agent.lab import SERVER_INT, SERVER_INT6, Lab
from scrape import samples

PORT = 9100
STREAMS = 50
BLOCK = "198.18.0.0/28"
BLOCK6 = "2001:db8:1::/124"
SERVERS = {4: SERVER_INT, 6: SERVER_INT6}


def wait(predicate, timeout: float, what: str, detail=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {detail()}")


def wait_cached(lab: Lab, count: int) -> None:
    """The backup's cache holds `count` entries (what it holds is in the error)."""
    wait(lambda: (conntrack_stats(lab, 2).get("cache_entries") or 0) >= count, 30, "the backup's cache",
         lambda: json.dumps({n: conntrack_stats(lab, n) for n in (1, 2)}) + "".join(
             (lab.dir / f"fw{n}.log").read_text()[-1500:] for n in (1, 2)))


def conntrack_stats(lab: Lab, node: int) -> dict:
    try:
        reply = request(lab.socket_path(node), "conntrack", {"action": "stats"}, timeout=5)
    except OSError:
        return {}
    return reply if reply.get("ok") else {}


def start_pair(lab: Lab, mode: str | None) -> None:
    lab.route_through_cluster()
    for node, state in ((1, "MASTER"), (2, "BACKUP")):
        lab.start_agent(node, lab.write_config(node, block=BLOCK, block_v6=BLOCK6, conntrack=mode,
                                                extra=lab.inside_block()))
        lab.wait_state(node, state, timeout=20)
    server = lab.spawn("server", [sys.executable, "-m", "agent.labstreams", "echo", str(PORT)],
                       stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"


def run_streams(lab: Lab, seconds: float, version: int = 4) -> subprocess.Popen:
    client = lab.spawn("client", [sys.executable, "-m", "agent.labstreams", "streams", SERVERS[version], str(PORT),
                                  str(STREAMS), str(seconds), "0.01"], stdout=subprocess.PIPE, text=True)
    assert client.stdout.readline().strip() == "ready"
    return client


def await_flowing(client: subprocess.Popen, timeout: float = 30.0) -> None:
    """Until every stream has echoed through the master for a while (agent.labstreams)."""
    ready, _, _ = select.select([client.stdout], [], [], timeout)
    assert ready and client.stdout.readline().strip() == "flowing", "the streams never flowed"


def finish(client: subprocess.Popen) -> dict:
    out, _ = client.communicate(timeout=60)
    return json.loads(out)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("mode", ["cache", "hot"])
def test_established_flows_survive_the_masters_death(lab: Lab, mode: str, version: int) -> None:
    start_pair(lab, mode)
    client = run_streams(lab, seconds=6.0, version=version)
    # Every flow is known to the backup before the master dies.
    if mode == "cache":
        wait_cached(lab, STREAMS + 1)
    else:
        wait(lambda: (conntrack_stats(lab, 2).get("counters", {}).get("hot_written", 0)) >= STREAMS + 1, 30,
             "the hot writes")
    await_flowing(client)
    lab.kill_node(1)
    lab.wait_state(2, "MASTER", timeout=20)
    flows = finish(client)
    status = lab.status(2)
    # The failover's steps (a node may also have been master for a moment while starting).
    takeover = [t for t in status["transitions"] if t["new"] == "MASTER"][-1]
    replay = [s for s in takeover["steps"] if s["name"].startswith("replay:")]
    broken = {name: f for name, f in flows.items()
              if name != "udp" and (f["errors"] or f["corrupt_bytes"] or f["echoed"] != f["sent"])}
    assert not broken, json.dumps(broken)[:1500]
    assert flows["udp"]["corrupt_bytes"] == 0 and not flows["udp"]["errors"]
    # UDP datagrams sent while nobody held the block are lost; the flow goes on afterwards.
    assert flows["udp"]["echoed"] > flows["udp"]["sent"] * 0.5
    if mode == "cache":
        assert replay and replay[0]["detail"]["applied"] >= STREAMS + 1
    else:
        assert all(s["detail"].get("mode") == "hot" and s["detail"]["applied"] == 0 for s in replay)


def test_without_the_sync_the_flows_break(lab: Lab) -> None:
    start_pair(lab, None)
    client = run_streams(lab, seconds=5.0)
    await_flowing(client)
    lab.kill_node(1)
    lab.wait_state(2, "MASTER", timeout=20)
    flows = finish(client)
    stalled = [name for name, f in flows.items() if name != "udp" and (f["errors"] or f["echoed"] < f["sent"])]
    assert len(stalled) == STREAMS, flows


def test_graceful_handover_keeps_the_flows(lab: Lab) -> None:
    start_pair(lab, "cache")
    client = run_streams(lab, seconds=6.0)
    wait_cached(lab, STREAMS + 1)
    # What an operator alarms on says the backup's copy is complete.
    metrics = samples(request(lab.socket_path(2), "metrics")["text"])
    assert metrics[("dpagent_conntrack_peer_in_sync", (("peer", "192.0.2.5"),))] == 1
    assert metrics[("dpagent_conntrack_cache_entries", ())] >= STREAMS + 1
    await_flowing(client)
    assert request(lab.socket_path(1), "failover", {})["ok"]
    lab.wait_state(2, "MASTER", timeout=20)
    flows = finish(client)
    broken = {name: f for name, f in flows.items()
              if name != "udp" and (f["errors"] or f["corrupt_bytes"] or f["echoed"] != f["sent"])}
    assert not broken, json.dumps(broken)[:1500]

