"""agent.config.example: packaging/dpagent.toml is what the schema writes, it loads, and it documents every key."""

from __future__ import annotations

import re
from pathlib import Path

from agent.config import load_config
from agent.config.example import comment, documentation, render
from agent.config.schema import TABLES_BY_PATH

EXAMPLE = Path(__file__).parents[3] / "packaging" / "dpagent.toml"


def test_committed_example_is_the_generated_one() -> None:
    """Regenerate with `python -m agent.config.example > packaging/dpagent.toml`."""
    assert EXAMPLE.read_text() == render()


def test_example_shows_every_key_with_its_help_range_and_default() -> None:
    text = render()
    for path, keys in TABLES_BY_PATH.items():
        for k in keys:
            assert comment(documentation(k)) + "\n" in text, f"{path}.{k.name}"


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
