"""agent.config.model: block packing, and the election's settings built from the node's."""

from __future__ import annotations

import struct
import time
from ipaddress import ip_address, ip_network

import pytest

from agent.config import Block, NodeConfig
from agent.config.schema import TABLES_BY_PATH
from agent.core.election import ElectionConfig

ELECTION_KEYS = ("id", "priority", "preempt_delay", "advert_interval", "dead_multiplier")


def test_packed_v4_of_a_slash_16_is_complete_and_ordered() -> None:
    block = Block("big", "eth1", (ip_network("198.18.0.0/16"),), ())
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        packed = block.packed_v4()
        timings.append(time.perf_counter() - start)
    assert len(packed) == 65536 * 4
    values = struct.unpack(f"!{65536}I", packed)
    assert values == tuple(range(int(ip_address("198.18.0.0")), int(ip_address("198.18.255.255")) + 1))
    assert sorted(timings)[2] < 0.05  # about 1.5 ms here; the bound only catches a regression to per-address Python
    assert block.packed_v6() == b""


def test_packing_merges_prefixes_and_loose_addresses_in_order() -> None:
    block = Block("mix", "eth1",
                  (ip_network("192.0.2.8/30"), ip_network("203.0.113.0/31"), ip_network("2001:db8::100/126")),
                  (ip_address("192.0.2.1"), ip_address("198.51.100.1"), ip_address("203.0.113.9"),
                   ip_address("2001:db8::1"), ip_address("2001:db8::ffff")))
    v4 = [str(ip_address(b)) for b in struct.unpack(f"!{len(block.packed_v4()) // 4}I", block.packed_v4())]
    assert v4 == ["192.0.2.1", "192.0.2.8", "192.0.2.9", "192.0.2.10", "192.0.2.11", "198.51.100.1",
                  "203.0.113.0", "203.0.113.1", "203.0.113.9"]
    packed6 = block.packed_v6()
    v6 = [str(ip_address(packed6[i:i + 16])) for i in range(0, len(packed6), 16)]
    assert v6 == ["2001:db8::1", "2001:db8::100", "2001:db8::101", "2001:db8::102", "2001:db8::103", "2001:db8::ffff"]
    assert block.address_count == 4 + 2 + 4 + 5


def test_packed_v6_of_a_slash_112() -> None:
    block = Block("v6", "eth1", (ip_network("2001:db8:1:2:3:4:5:0/112"),), ())
    packed = block.packed_v6()
    assert len(packed) == 65536 * 16
    assert packed[:16] == ip_address("2001:db8:1:2:3:4:5:0").packed
    assert packed[16 * 0x1234:16 * 0x1235] == ip_address("2001:db8:1:2:3:4:5:1234").packed
    assert packed[-16:] == ip_address("2001:db8:1:2:3:4:5:ffff").packed



# --- the election's settings -----------------------------------------------------------------


@pytest.mark.parametrize("end", [0, 1])
def test_every_node_value_the_schema_accepts_makes_an_election_config(end: int) -> None:
    """Config and election read the same ranges (agent.core.limits): no value passes one and fails the other."""
    bounds = {k.name: k.range[end] for k in TABLES_BY_PATH["node"] if k.name in ELECTION_KEYS}
    node = NodeConfig(bounds["id"], bounds["priority"], end == 1, bounds["preempt_delay"],
                      bounds["advert_interval"], bounds["dead_multiplier"])
    assert node.election == ElectionConfig(node.id, node.priority, node.preempt, node.preempt_delay,
                                           node.advert_interval, node.dead_multiplier)
    assert node.election.dead_interval == node.dead_interval


@pytest.mark.parametrize(("field", "value"), [
    ("node_id", 0), ("priority", 255), ("advert_interval", 0.001), ("advert_interval", 60.0),
    ("dead_multiplier", 21), ("preempt_delay", 3601.0),
])
def test_election_config_refuses_what_the_schema_refuses(field: str, value: float) -> None:
    settings = {"node_id": 1, "priority": 100, field: value}
    with pytest.raises(ValueError, match=field):
        ElectionConfig(**settings)  # type: ignore[arg-type]
