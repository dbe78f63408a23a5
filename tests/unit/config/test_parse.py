"""agent.config.parse: every key is checked against its schema entry, bounds included."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.config.messages import show
from agent.config.schema import INTEGER, NUMBER, TABLES_BY_PATH, Key, describe
from config_documents import minimal, one_error, write

# Where each schema table sits in the minimal document, and how its keys are named there.
PLACES = {"node": "node", "heartbeat": "heartbeat[0]", "block": "block[0]", "block.announce": "block[0].announce",
          "block.l2": "block[0].l2", "conntrack": "conntrack"}
RANGED = [(path, k) for path, keys in TABLES_BY_PATH.items() for k in keys if k.type in (INTEGER, NUMBER)]


def with_value(path: str, name: str, value: object) -> dict:
    document = minimal()
    if path == "conntrack":
        document["conntrack"] = {"interface": "eth2", "peers": ["192.0.2.2"]}
    table = {"node": document["node"], "heartbeat": document["heartbeat"][0], "block": document["block"][0],
             "conntrack": document.get("conntrack")}.get(path)
    if table is None:
        table = document["block"][0].setdefault(path.rpartition(".")[2], {})
    table[name] = value
    return document


@pytest.mark.parametrize(("path", "key"), RANGED, ids=[f"{p}.{k.name}" for p, k in RANGED])
def test_ranged_keys_take_their_bounds_and_refuse_beyond(workdir: Path, path: str, key: Key) -> None:
    low, high = key.range  # type: ignore[misc]
    for value in (low, high):
        load_config(write(workdir, with_value(path, key.name, value)))
    step = 1 if key.type == INTEGER else 0.001
    for value in (low - step, high + step):
        assert one_error(workdir, with_value(path, key.name, value)) == (
            f"DIR/dpagent.toml: {PLACES[path]}.{key.name} = {show(value)}: must be {describe(key)}")


def test_a_key_the_schema_lacks_is_unknown_in_every_table(workdir: Path) -> None:
    for path in PLACES:
        assert one_error(workdir, with_value(path, "colour", 1)).endswith(f"{PLACES[path]}.colour = 1: unknown key")
