"""bench/ct_writer.c, the kernel ceiling of bench/conntrack.py, makes what it says: 1,000
TCP ESTABLISHED entries in a namespace of its own, and counts EEXIST when asked again."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

WRITER = Path(__file__).parents[2] / "bench" / "ct_writer.c"

pytestmark = pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("conntrack")),
                                reason="needs gcc and conntrack")


def run(netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], check=True, capture_output=True, text=True).stdout


def test_writer_creates_entries(netns_factory, tmp_path):
    binary = tmp_path / "ct_writer"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(binary), str(WRITER)], check=True)
    netns = netns_factory("dpt-ctw")

    first = json.loads(run(netns, str(binary), "1000", "0", "256"))
    assert first["applied"] == 1000 and first["errors"] == {} and first["sends"] == 4
    assert run(netns, "conntrack", "-C").strip() == "1000"
    saved = run(netns, "conntrack", "-L", "-o", "save").splitlines()
    assert len(saved) == 1000
    assert all("--state ESTABLISHED" in line and "ASSURED" in line and "SEEN_REPLY" in line for line in saved)

    # The same range again: every message fails with EEXIST (17), and the table is unchanged.
    again = json.loads(run(netns, str(binary), "1000"))
    assert again["applied"] == 0 and again["errors"] == {"17": 1000}
    assert run(netns, "conntrack", "-C").strip() == "1000"
