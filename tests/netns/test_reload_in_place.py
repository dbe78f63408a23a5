"""Reloading a changed block while MASTER adjusts it in place: nothing that stays is removed."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from agent.lab import BLOCK_V4, Lab


def local_routes(lab: Lab) -> set[str]:
    out = lab.exec("fw1", ["ip", "route", "show", "table", "local", "proto", "199"]).stdout
    return {line.split()[1] for line in out.splitlines()}


def test_editing_a_held_blocks_address_file_adds_and_removes_only_the_difference(lab):
    addresses = lab.dir / "ext0.addr.external"
    addresses.write_text("# classic address file\n203.0.113.50\n203.0.113.51\n")
    config = lab.write_config(1, announce=f'address_files = ["{addresses}"]')
    lab.start_agent(1, config)
    lab.wait_state(1, "MASTER")
    deadline = time.monotonic() + 5
    while local_routes(lab) != {BLOCK_V4, "203.0.113.50", "203.0.113.51"}:
        assert time.monotonic() < deadline, local_routes(lab)
        time.sleep(0.05)

    monitor = lab.spawn("fw1", ["ip", "monitor", "route"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.2)
    addresses.write_text("203.0.113.51\n203.0.113.52\n")
    done = lab.exec("fw1", [sys.executable, "-m", "agent.cli", "-s", lab.socket_path(1), "reload"])
    assert "reloaded" in done.stdout
    deadline = time.monotonic() + 5
    while local_routes(lab) != {BLOCK_V4, "203.0.113.51", "203.0.113.52"}:
        assert time.monotonic() < deadline, local_routes(lab)
        time.sleep(0.05)
    time.sleep(0.2)
    monitor.terminate()
    events = monitor.communicate(timeout=5)[0].splitlines()

    deleted = [line for line in events if line.startswith("Deleted")]
    assert len(deleted) == 1 and "203.0.113.50" in deleted[0], events
    assert not any("203.0.113.51" in line or BLOCK_V4 in line for line in events), events
    deadline = time.monotonic() + 5
    while True:
        reload = lab.status(1)["transitions"][-1]
        steps = {s["name"]: s for s in reload["steps"]}
        if steps.get("announce:ext", {}).get("done"):
            break
        assert time.monotonic() < deadline, reload
        time.sleep(0.05)
    assert reload["reason"] == "reload"
    assert steps["adjust:ext"]["detail"]["added"]["applied"] == 1
    assert steps["adjust:ext"]["detail"]["removed"]["applied"] == 1
    assert steps["announce:ext"]["detail"]["frames_sent"] == 65536 + 2
    assert lab.state(1) == "MASTER"


def v6_addresses(lab: Lab) -> set[str]:
    out = lab.exec("fw1", ["ip", "-6", "-j", "addr", "show", "dev", "ext0"]).stdout
    return {a["local"] for link in json.loads(out) for a in link.get("addr_info", [])
            if a.get("local", "").startswith("2001:db8:1:")}


def test_narrowing_a_held_ipv6_prefix_keeps_the_addresses_that_stay(lab):
    """The landed bug: /116 -> /117 re-added nothing and then removed all 4,096 addresses."""
    config = lab.write_config(1, block_v6=True)
    lab.start_agent(1, config)
    lab.wait_state(1, "MASTER")
    deadline = time.monotonic() + 20
    while len(v6_addresses(lab)) != 4096:
        assert time.monotonic() < deadline, len(v6_addresses(lab))
        time.sleep(0.1)
    config.write_text(config.read_text().replace("2001:db8:1::/116", "2001:db8:1::/117"))
    done = lab.exec("fw1", [sys.executable, "-m", "agent.cli", "-s", lab.socket_path(1), "reload"])
    assert "reloaded" in done.stdout
    deadline = time.monotonic() + 20
    while len(v6_addresses(lab)) != 2048:
        assert time.monotonic() < deadline, len(v6_addresses(lab))
        time.sleep(0.1)
    kept = v6_addresses(lab)
    assert "2001:db8:1::" in kept and "2001:db8:1::7ff" in kept and "2001:db8:1::800" not in kept
