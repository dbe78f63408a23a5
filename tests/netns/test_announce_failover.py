"""After a node death, the neighbours' caches point at the new master before they send anything.

The client resolves thousands of block addresses (IPv4 and IPv6) so that its
neighbour cache holds fw1's MAC for each; fw1 dies; the takeover's announcement
round alone must move every one of those entries to fw2's MAC.
"""

from __future__ import annotations

import json
import sys
import time

from agent.lab import BLOCK_V4, BLOCK_V6, Lab
from agent.labprobe import spread

RESOLVED_V4 = 4096
RESOLVED_V6 = 4096


def neighbours(lab: Lab) -> dict[str, str | None]:
    out = lab.exec("client", ["ip", "-j", "neigh", "show", "dev", "ext0"]).stdout
    return {entry["dst"]: entry.get("lladdr") for entry in json.loads(out)}


def wait_resolved(lab: Lab, wanted: list[str], mac: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cache = neighbours(lab)
        if all(cache.get(a) == mac for a in wanted):
            return
        time.sleep(0.2)
    missing = [a for a in wanted if cache.get(a) != mac]
    raise AssertionError(f"{len(missing)} of {len(wanted)} not resolved to {mac}, e.g. {missing[:3]}")


def test_neighbour_caches_follow_the_block_to_the_new_master(lab):
    lab.start_agent(1, lab.write_config(1, block_v6=True))
    lab.wait_state(1, "MASTER")
    lab.start_agent(2, lab.write_config(2, block_v6=True))
    lab.wait_master_seen(2, 1)
    # fw1 takes the IPv6 block after the IPv4 one: wait until both are held.
    deadline = time.monotonic() + 60
    while not all(b["held"] for b in lab.status(1)["blocks"]):
        assert time.monotonic() < deadline, f"fw1 never held both blocks: {lab.status(1)['transitions']}"
        time.sleep(0.1)
    fw1_mac, fw2_mac = lab.mac("fw1", "ext0"), lab.mac("fw2", "ext0")

    v4 = spread(BLOCK_V4, RESOLVED_V4)
    v6 = spread(BLOCK_V6, RESOLVED_V6)
    # Real ARP / ND from the client, entries kept out of the host-wide gc limit (see Lab.resolve).
    lab.resolve(v4 + v6)
    wait_resolved(lab, v4 + v6, fw1_mac)

    lab.kill_node(1)
    lab.wait_state(2, "MASTER", timeout=5)
    deadline = time.monotonic() + 60
    while True:
        steps = {s["name"]: s for s in lab.status(2)["transitions"][-1]["steps"]}
        if steps.get("announce:ext6", {}).get("done"):
            break
        assert time.monotonic() < deadline, f"announcement not finished: {sorted(steps)}"
        time.sleep(0.1)

    assert steps["announce:ext"]["ok"] and steps["announce:ext"]["detail"]["frames_sent"] == 65536
    assert steps["announce:ext6"]["ok"] and steps["announce:ext6"]["detail"]["frames_sent"] == 4096
    cache = neighbours(lab)
    stale = [a for a in v4 + v6 if cache.get(a) != fw2_mac]
    assert stale == [], f"{len(stale)} entries still elsewhere, e.g. {stale[:3]}"


def rx_packets(lab: Lab) -> int:
    out = lab.exec("client", ["ip", "-j", "-s", "link", "show", "ext0"]).stdout
    return json.loads(out)[0]["stats64"]["rx"]["packets"]


def test_announcing_stops_at_once_when_the_node_leaves_master(lab):
    # 5,000 frames/s: the /16 would take 13 s to announce.
    lab.start_agent(1, lab.write_config(1, announce="[block.announce]\npps = 5000"))
    lab.wait_state(1, "MASTER")
    time.sleep(0.5)
    done = lab.exec("fw1", [sys.executable, "-m", "agent.cli", "-s", lab.socket_path(1), "maintenance", "on"])
    assert "maintenance on" in done.stdout
    deadline = time.monotonic() + 2
    while True:
        taken = next(t for t in lab.status(1)["transitions"] if t["new"] == "MASTER")
        step = {s["name"]: s for s in taken["steps"]}["announce:ext"]
        if step["done"]:
            break
        assert time.monotonic() < deadline, "the announcement round did not stop"
        time.sleep(0.05)
    assert step["detail"]["cancelled"]
    assert 0 < step["detail"]["frames_sent"] < 65536 // 2
    before = rx_packets(lab)
    time.sleep(0.5)
    assert rx_packets(lab) - before < 10, "frames still arriving after the node left MASTER"
    assert lab.state(1) == "MAINTENANCE"
