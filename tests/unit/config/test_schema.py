"""agent.config.schema: the tables agree with themselves and with the election's limits."""

from __future__ import annotations

import pytest

from agent.config.schema import (
    BOOLEAN, INTEGER, NUMBER, NUMBER_OR_OFF, REQUIRED, STRING, TABLES_BY_PATH, Key,
)
from agent.core import limits

KEYS = [(path, k) for path, keys in TABLES_BY_PATH.items() for k in keys]


@pytest.mark.parametrize(("path", "key"), KEYS, ids=[f"{p}.{k.name}" for p, k in KEYS])
def test_every_default_is_a_value_of_its_own_key(path: str, key: Key) -> None:
    if key.default is None or key.default is REQUIRED:
        return
    if key.type in (INTEGER, NUMBER):
        assert key.range[0] <= key.default <= key.range[1]
    if key.type == NUMBER_OR_OFF:
        assert key.default == 0 or key.range[0] <= key.default <= key.range[1]
    if key.type == STRING and key.range:
        assert key.default in key.range
    if key.type == BOOLEAN:
        assert isinstance(key.default, bool)


def test_the_election_ranges_are_the_core_limits() -> None:
    ranges = {k.name: k.range for k in TABLES_BY_PATH["node"]}
    assert ranges["id"] == limits.NODE_ID
    assert ranges["priority"] == limits.PRIORITY
    assert ranges["preempt_delay"] == limits.PREEMPT_DELAY
    assert ranges["advert_interval"] == limits.ADVERT_INTERVAL
    assert ranges["dead_multiplier"] == limits.DEAD_MULTIPLIER
