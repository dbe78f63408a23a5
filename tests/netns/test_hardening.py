"""The failure paths of the Harden issue, on the real kernel with real traffic.

Each test states the defect it guards against: a second instance, a duplicate
node id, an unclean exit, a route removed behind the agent's back, a split brain
healing with the neighbours still pointing at the loser, lossy heartbeats.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from agent.lab import BLOCK_V4, HB_PORT, Lab
from scrape import samples
from waiting import wait_for

SAMPLE_V4 = ["198.18.0.1", "198.18.128.7", "198.18.255.254"]
# A small IPv6 block where the test does not need 4,096 addresses: adding those
# takes seconds, and over 15 s with both CPUs busy.
SMALL_V6 = "2001:db8:1::/124"
SAMPLE_V6 = ["2001:db8:1::1", "2001:db8:1::8", "2001:db8:1::e"]


def start_pair(lab: Lab, **options) -> None:
    lab.start_agent(1, lab.write_config(1, **options))
    lab.wait_state(1, "MASTER")
    lab.start_agent(2, lab.write_config(2, **options))
    lab.wait_master_seen(2, 1)



def dpagent(lab: Lab, node: int, *args: str, config=None) -> subprocess.CompletedProcess:
    config = config or lab.dir / f"fw{node}.toml"
    return lab.exec(f"fw{node}", [sys.executable, "-m", "agent.runtime.main", "-c", str(config), *args], check=False)


def agentctl(lab: Lab, node: int, *args: str) -> subprocess.CompletedProcess:
    return lab.exec(f"fw{node}", [sys.executable, "-m", "agent.cli", "-s", lab.socket_path(node), *args], check=False)


def ours_in_kernel(lab: Lab, node: int) -> str:
    """dpagent's routes (protocol 199) and the lab's IPv6 block addresses (only dpagent
    adds those; this iproute2 cannot filter addresses by IFA_PROTO) in fw<node>'s kernel."""
    routes = lab.exec(f"fw{node}", ["ip", "route", "show", "table", "all", "proto", "199"]).stdout
    links = json.loads(lab.exec(f"fw{node}", ["ip", "-j", "-6", "addr", "show", "dev", "ext0"]).stdout)
    v6 = [a["local"] for link in links for a in link.get("addr_info", []) if a["local"].startswith("2001:db8:1:")]
    return routes.strip() + " ".join(v6)


def client_macs(lab: Lab, addresses: list[str]) -> dict[str, str | None]:
    entries = json.loads(lab.exec("client", ["ip", "-j", "neigh", "show", "dev", "ext0"]).stdout or "[]")
    found = {e["dst"]: e.get("lladdr") for e in entries}
    return {a: found.get(a) for a in addresses}


def test_a_second_instance_with_another_socket_is_refused_and_touches_nothing(lab):
    first = lab.write_config(1)
    lab.start_agent(1, first)
    lab.wait_state(1, "MASTER")
    other = lab.dir / "second.toml"
    other.write_text(first.read_text().replace(lab.socket_path(1), str(lab.dir / "second.sock")))
    second = dpagent(lab, 1, config=other)
    assert second.returncode == 1, second.stderr
    assert "another dpagent is running" in second.stderr
    assert lab.holds_block(1) and lab.state(1) == "MASTER"
    assert lab.status(1)["leftovers_removed"]["applied"] == 0


def test_sigkill_leaves_routes_that_cleanup_removes_but_never_while_an_agent_runs(lab):
    lab.start_agent(1, lab.write_config(1, block_v6=True))
    lab.wait_state(1, "MASTER")
    wait_for(lambda: lab.status(1)["blocks"][1]["held"] and ours_in_kernel(lab, 1).count("2001:db8:1:") > 4000,
               30, "the IPv6 block taken")
    refused = dpagent(lab, 1, "cleanup")
    assert refused.returncode == 1 and "another dpagent is running" in refused.stderr
    assert lab.holds_block(1)
    lab.kill_agent(1, signal.SIGKILL)
    assert ours_in_kernel(lab, 1)
    # What the unit's ExecStopPost runs after every exit.
    done = dpagent(lab, 1, "cleanup")
    assert done.returncode == 0, done.stderr
    assert ours_in_kernel(lab, 1) == ""


def test_the_unit_cleans_up_after_every_exit():
    from pathlib import Path

    unit = (Path(__file__).parents[2] / "packaging" / "dpagent.service").read_text()
    assert "\nExecStopPost=/usr/bin/dpagent -c /etc/dpagent/dpagent.toml cleanup\n" in unit
    assert "\nRestart=on-failure\n" in unit


def test_sigterm_during_a_long_take_releases_everything_and_exits_clean(lab):
    agent = lab.start_agent(1, lab.write_config(1, block_v6=True))
    lab.wait_state(1, "MASTER")
    # 4,096 IPv6 addresses take seconds: stop in the middle of it.
    wait_for(lambda: "2001:db8:1:" in ours_in_kernel(lab, 1), 10, "the take started")
    os.killpg(agent.pid, signal.SIGTERM)
    # The take stops at its next sendmsg; the release of what it added follows.
    assert agent.wait(timeout=60) == 0
    assert ours_in_kernel(lab, 1) == ""
    taken = lab.exec("fw1", ["cat", str(lab.dir / "fw1.log")]).stdout
    assert "stopping with block" not in taken


def test_a_duplicate_node_id_ends_in_fault_on_both(lab):
    lab.start_agent(1, lab.write_config(1))
    lab.wait_state(1, "MASTER")
    twin = lab.dir / "fw2-as-1.toml"
    twin.write_text(lab.write_config(2).read_text().replace("id = 2\n", "id = 1\n", 1))
    lab.start_agent(2, twin)
    for node in (1, 2):
        status = lab.wait_state(node, "FAULT", timeout=10)
        assert "duplicate node id 1" in status["node"]["last_transition"]["reason"]
    wait_for(lambda: not lab.holds_block(1) and not lab.holds_block(2), 10, "both released")


def test_failover_without_a_live_backup_is_refused_unless_forced(lab):
    lab.start_agent(1, lab.write_config(1))
    lab.wait_state(1, "MASTER")
    refused = agentctl(lab, 1, "failover")
    assert refused.returncode == 1 and "no live backup" in refused.stderr
    assert lab.state(1) == "MASTER"
    forced = agentctl(lab, 1, "failover", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "forced" in forced.stdout


def test_a_dead_peer_is_shown_dead_not_as_the_master_it_last_was(lab):
    start_pair(lab)
    lab.kill_node(1)
    lab.wait_state(2, "MASTER", timeout=5)
    peer = wait_for(lambda: [p for p in lab.status(2)["node"]["peers"] if not p["alive"]], 5, "fw1 dead")[0]
    assert peer["node_id"] == 1 and peer["dead_for_s"] >= 0
    text = agentctl(lab, 2, "status").stdout
    assert "DEAD for" in text and "last said MASTER" in text


def test_a_route_removed_behind_the_agents_back_is_put_back_and_counted(lab):
    lab.start_agent(1, lab.write_config(1))
    lab.wait_state(1, "MASTER")
    wait_for(lambda: lab.holds_block(1), 5, "taken")
    lab.exec("fw1", ["ip", "route", "del", "local", BLOCK_V4, "dev", "lo", "table", "local", "proto", "199"])
    assert not lab.holds_block(1)
    status = wait_for(lambda: (s := lab.status(1)) and s["repairs"].get("ext") and s, 30, "repaired")
    assert status["repairs"] == {"ext": 1}
    assert lab.holds_block(1)
    assert samples(agentctl(lab, 1, "metrics").stdout)[("dpagent_block_repaired_total", (("block", "ext"),))] == 1


def heartbeat_filter(lab: Lab, node: int, rule: str) -> None:
    """Replace fw<node>'s heartbeat input filter with `rule` (nothing: pass everything)."""
    ns = f"fw{node}"
    lab.exec(ns, ["nft", "add", "table", "inet", "hbloss"])
    lab.exec(ns, ["nft", "add", "chain", "inet", "hbloss", "input", "{ type filter hook input priority -10; }"])
    lab.exec(ns, ["nft", "flush", "chain", "inet", "hbloss", "input"])
    if rule:
        lab.exec(ns, ["nft", "add", "rule", "inet", "hbloss", "input", *rule.split()])


def test_after_a_split_brain_heals_the_winner_announces_again(lab):
    start_pair(lab, block_v6=SMALL_V6)
    fw1_mac, fw2_mac = lab.mac("fw1", "ext0"), lab.mac("fw2", "ext0")
    lab.resolve(SAMPLE_V4 + SAMPLE_V6)
    wait_for(lambda: set(client_macs(lab, SAMPLE_V4 + SAMPLE_V6).values()) == {fw1_mac}, 20, "client on fw1")
    for node in (1, 2):
        heartbeat_filter(lab, node, f"udp dport {HB_PORT} drop")
    lab.wait_state(2, "MASTER", timeout=5)
    wait_for(lambda: set(client_macs(lab, SAMPLE_V4 + SAMPLE_V6).values()) == {fw2_mac}, 40,
               "the client followed fw2's announcement")
    time.sleep(1.5)  # past the neighbours' locktime, as a 3 s split would be
    for node in (1, 2):
        heartbeat_filter(lab, node, "")
    lab.wait_state(2, "BACKUP", timeout=5)

    def settled_on_the_master() -> str | None:
        """The master's MAC once exactly one node is master and every sampled entry names it.

        fw1 wins the heal; on a machine loaded enough to stall its loop it may fence
        itself right after and hand over to fw2: then fw2 is the winner the
        neighbours must follow."""
        masters = [n for n in (1, 2) if lab.state(n) == "MASTER"]
        if len(masters) != 1:
            return None
        mac = {1: fw1_mac, 2: fw2_mac}[masters[0]]
        return mac if set(client_macs(lab, SAMPLE_V4 + SAMPLE_V6).values()) == {mac} else None

    winner = wait_for(settled_on_the_master, 40,
                        f"the client on the one master: {client_macs(lab, SAMPLE_V4 + SAMPLE_V6)}")
    if winner == fw2_mac:
        # The only acceptable way for the loser of the heal to end up master.
        reasons = [t["reason"] for t in lab.status(1)["transitions"]]
        assert any(r.startswith("self-fence") for r in reasons), reasons


def test_thirty_percent_heartbeat_loss_for_a_minute_moves_nothing(lab):
    """Once the loss has been seen. At its sudden onset fw2 still waits the configured
    3 intervals, having seen no loss yet: a first run of three lost adverts (p^2, 9 %
    at 30 %) is a takeover there, as it is for keepalived. So the minute is counted
    from a few seconds into the loss, with the pair settled again."""
    start_pair(lab)
    # Everything on hb1 and 30 % on hb0: 30 % of the adverts reach fw2 on no link at all.
    heartbeat_filter(lab, 2, f'iifname "hb1" udp dport {HB_PORT} drop')
    lab.exec("fw2", ["nft", "add", "rule", "inet", "hbloss", "input", "iifname", "hb0", "udp", "dport",
                     str(HB_PORT), "numgen", "random", "mod", "100", "<", "30", "drop"])
    wait_for(lambda: (s := lab.status(2)) and s["node"]["peers"] and s["node"]["peers"][0]["loss"] > 0.15,
               30, "fw2 measures the loss")
    lab.wait_state(1, "MASTER", timeout=10)
    lab.wait_master_seen(2, 1, timeout=10)
    before = len(lab.status(2)["transitions"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert lab.state(2) == "BACKUP" and not lab.holds_block(2)
        time.sleep(0.5)
    status = lab.status(2)
    assert len(status["transitions"]) == before
    peer = status["node"]["peers"][0]
    assert 0.15 < peer["loss"] < 0.6 and peer["dead_interval_s"] > 0.15
    # Total loss: the takeover still comes, within the ceiling (1 s by default).
    heartbeat_filter(lab, 2, f"udp dport {HB_PORT} drop")
    lab.wait_state(2, "MASTER", timeout=10)
