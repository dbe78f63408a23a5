"""`make run`'s options: the demo with a chosen block, L2 mode and fault ends with its timeline drawn."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("options", [("--block", "/24", "--l2", "vmac", "--fault", "graceful"),
                                     ("--block", "198.18.0.0/26", "--fault", "hang")])
def test_the_demo_runs_the_chosen_drill_and_draws_its_timeline(tmp_path, options):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "timeline.png"
    done = subprocess.run([sys.executable, "-m", "agent.lab", "demo", *options, "--probe-count", "8",
                           "--plot", str(plot)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    block = "198.18.0.0/24" if "/24" in options else "198.18.0.0/26"
    assert f"block {block} on-link" in done.stdout
    assert f"fault {options[-1]}" in done.stdout and "BACKUP -> MASTER" in done.stdout
    assert "outage over 8 addresses" in done.stdout
    assert f"timeline drawn to {plot}" in done.stdout and plot.read_bytes()[:4] == b"\x89PNG"
    assert "removed" in done.stdout
