"""agent.config.schema: the example configuration documents every key."""

from __future__ import annotations

import re
from pathlib import Path

from agent.config import load_config

EXAMPLE = Path(__file__).parents[3] / "packaging" / "dpagent.toml"


def test_example_config_is_valid(workdir: Path) -> None:
    (workdir / "eth1.addr.external").write_text("203.0.113.20\n")
    text = EXAMPLE.read_text().replace("/etc/dpagent/", f"{workdir}/")
    path = workdir / "dpagent.toml"
    path.write_text(text)
    config = load_config(path)
    assert [b.name for b in config.blocks] == ["external", "internal-gw"]


def test_example_config_comments_every_key() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for previous, line in zip(lines, lines[1:]):
        if re.match(r"[a-z_]+ = ", line):
            assert previous.startswith("#"), line

