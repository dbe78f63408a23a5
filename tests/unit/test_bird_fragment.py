"""packaging/bird-dpagent.conf: BIRD parses it, and it names what the agent and the lab expect."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from agent.config.schema import default
from agent.dataplane.routes import ROUTE_TABLE
from agent.labbgp import BIRD, node_bird_config

FRAGMENT = Path(__file__).parents[2] / "packaging" / "bird-dpagent.conf"


def kernel_protocols(text: str) -> dict[str, str]:
    """name -> the kernel table of each `protocol kernel NAME` in a BIRD configuration."""
    found = {}
    for name, body in re.findall(r"protocol kernel (\w+) \{(.*?)\n\}", text, re.S):
        found[name] = re.search(r"kernel table (\d+);", body).group(1)
    return found


def test_the_fragment_s_protocols_are_the_default_ones_on_table_199():
    assert kernel_protocols(FRAGMENT.read_text()) == {name: str(ROUTE_TABLE) for name in default("bgp", "protocols")}


def test_the_lab_runs_the_fragment_s_kernel_protocols():
    lab = node_bird_config("192.0.2.1", Path("/dev/null"))
    assert kernel_protocols(lab) == kernel_protocols(FRAGMENT.read_text())
    assert "krt_source = 199" in lab


@pytest.mark.skipif(not os.path.exists(BIRD), reason="needs BIRD 2 (Debian bird2)")
def test_bird_parses_it():
    done = subprocess.run([BIRD, "-p", "-c", str(FRAGMENT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
