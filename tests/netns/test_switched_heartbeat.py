"""Heartbeat links through a switch: a dead peer takes no carrier with it, only the dead interval tells."""

from __future__ import annotations

import time

import pytest

from agent.lab import Lab
from agent.labprobe import address_outages, outage


def link_states(lab: Lab, node: int) -> dict[str, str]:
    return {link["name"]: link["kernel"] for link in lab.status(node)["links"]}


@pytest.mark.lab(heartbeat="switched")
def test_node_death_over_a_switch_is_told_by_the_dead_interval_and_traffic_resumes(lab):
    lab.start_agent(1)
    lab.wait_state(1, "MASTER")
    lab.start_agent(2)
    lab.wait_master_seen(2, 1)
    lab.wait_heard_on(2, ["hb0", "hb1"])
    fw2_mac = lab.mac("fw2", "ext0")
    probe = lab.start_probe(4.0)
    time.sleep(0.5)
    killed_at = lab.kill_node(1)
    status = lab.wait_state(2, "MASTER", timeout=5)
    result = probe.finish()

    reason = status["node"]["last_transition"]["reason"]
    assert "silent" in reason and "carrier" not in reason, reason
    # The survivor's ends of the heartbeat links kept their carrier: the switch is still there.
    assert link_states(lab, 2) == {"hb0": "up", "hb1": "up"}
    took = status["transitions"][-1]
    # The dead interval (3 x 50 ms) runs from fw1's last advert, up to one interval before the kill.
    assert took["at"] - killed_at >= 0.15 - 0.05 - 0.01
    gap = outage(result, killed_at, fw2_mac)
    assert gap.macs_after == (fw2_mac,)
    per_address = address_outages(result, killed_at, fw2_mac)
    assert all(o.back for o in per_address), [o.target for o in per_address if not o.back]
    assert lab.holds_block(2)
