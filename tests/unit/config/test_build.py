"""agent.config.build: whole documents, every error message, and nothing but ConfigInvalid."""

from __future__ import annotations

import copy
import math
import re
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import (
    AnnounceConfig,
    Block,
    ConfigError,
    ConfigInvalid,
    HeartbeatLink,
    NodeConfig,
    format_errors,
    load_config,
)
from agent.config.schema import TABLES_BY_PATH
from config_documents import SECRET, error_lines, minimal, one_error, write


# --- valid configurations ------------------------------------------------------------------


def test_full_config_loads_every_field(workdir: Path) -> None:
    (workdir / "eth1.addr.external").write_text("203.0.113.7\n2001:db8::7\n")
    document = {
        "node": {"id": 4294967295, "priority": 254, "preempt": False, "preempt_delay": 1.5,
                 "advert_interval": 1, "dead_multiplier": 20},
        "auth": {"key_file": str(workdir / "key")},
        "control": {"socket": "/run/x.sock"},
        "heartbeat": [
            {"interface": "eth0", "group": "ff02::12", "port": 9000},
            {"interface": "eth2", "peers": ["192.0.2.2", "192.0.2.3", "192.0.2.2"]},
        ],
        "block": [
            {"name": "ext-1", "interface": "eth1", "prefixes": ["198.18.0.0/24", "2001:db8:1::/120"],
             "addresses": ["203.0.113.9", "198.18.0.5/32"], "address_files": ["eth1.addr.external"],
             "announce": {"pps": 1000, "rounds": 100, "round_delay": 0.1, "refresh": 60,
                          "arp_mode": "reply"}},
            {"name": "gw", "interface": "eth2", "addresses": ["192.0.2.254"]},
        ],
    }
    config = load_config(write(workdir, document))
    assert config.path == workdir / "dpagent.toml"
    assert config.node == NodeConfig(4294967295, 254, False, 1.5, 1.0, 20)
    assert isinstance(config.node.advert_interval, float)
    assert config.node.dead_interval == 20.0
    assert config.key_file == workdir / "key"
    assert config.keys == ((1, bytes.fromhex(SECRET)),)
    assert config.control_socket == Path("/run/x.sock")
    assert config.heartbeat == (
        HeartbeatLink("eth0", ip_address("ff02::12"), (), 9000),
        HeartbeatLink("eth2", None, (ip_address("192.0.2.2"), ip_address("192.0.2.3")), 7788),
    )
    ext, gw = config.blocks
    assert ext == Block(
        "ext-1", "eth1",
        (ip_network("198.18.0.0/24"), ip_network("2001:db8:1::/120")),
        (ip_address("203.0.113.7"), ip_address("203.0.113.9"), ip_address("2001:db8::7")),
        AnnounceConfig(1000, 100, 0.1, 60.0, "reply"),
    )
    assert ext.address_count == 256 + 256 + 3
    assert gw == Block("gw", "eth2", (), (ip_address("192.0.2.254"),), AnnounceConfig())


def test_defaults(workdir: Path) -> None:
    config = load_config(write(workdir, minimal()))
    assert config.node == NodeConfig(id=1, priority=100, preempt=True, preempt_delay=0.0,
                                     advert_interval=0.05, dead_multiplier=3)
    assert config.control_socket == Path("/run/dpagent/control.sock")
    assert config.heartbeat[0].port == 7788
    assert config.blocks[0].announce == AnnounceConfig(pps=0, rounds=2, round_delay=2.0, refresh=0.0,
                                                       arp_mode="request")



# --- error messages, exactly ---------------------------------------------------------


def with_change(where: str, key: str, value: object) -> dict:
    document = minimal()
    table = document
    for part in where.split("."):
        table = table[int(part)] if part.isdigit() else table.setdefault(part, {})
    table[key] = value
    return document


@pytest.mark.parametrize(("where", "key", "value", "expected"), [
    ("node", "priority", 300, "node.priority = 300: must be an integer from 1 to 254"),
    ("node", "priority", True, "node.priority = true: must be an integer from 1 to 254"),
    ("node", "id", 0, "node.id = 0: must be an integer from 1 to 4294967295"),
    ("node", "id", 2**32, "node.id = 4294967296: must be an integer from 1 to 4294967295"),
    ("node", "preempt", "yes", 'node.preempt = "yes": must be true or false'),
    ("node", "preempt_delay", -1, "node.preempt_delay = -1: must be a number from 0 to 3600"),
    ("node", "preempt_delay", math.inf, "node.preempt_delay = inf: must be a number from 0 to 3600"),
    ("node", "advert_interval", 0.001, "node.advert_interval = 0.001: must be a number from 0.01 to 10"),
    ("node", "advert_interval", False, "node.advert_interval = false: must be a number from 0.01 to 10"),
    ("node", "dead_multiplier", 2.5, "node.dead_multiplier = 2.5: must be an integer from 2 to 20"),
    ("node", "prio", 5, 'node.prio = 5: unknown key (did you mean "priority"?)'),
    ("auth", "key_file", 7, "auth.key_file = 7: must be a string"),
    ("heartbeat.0", "port", 0, "heartbeat[0].port = 0: must be an integer from 1 to 65535"),
    ("heartbeat.0", "group", "192.0.2.1", 'heartbeat[0].group = "192.0.2.1": must be a multicast address'),
    ("heartbeat.0", "ttl", 1, "heartbeat[0].ttl = 1: unknown key"),
    ("heartbeat.0", "interface", "a/b", 'heartbeat[0].interface = "a/b": must be a Linux interface name'
                                        " (1 to 15 bytes, no '/', ':' or spaces)"),
    ("heartbeat.0", "peers", ["192.0.2.2"], "heartbeat[0]: give either group or peers, not both"),
    ("block.0", "name", "bad name", 'block[0].name = "bad name": must be 1 to 32 characters from'
                                    " A-Z, a-z, 0-9, '_' and '-'"),
    ("block.0", "interface", "a" * 16, 'block[0].interface = "aaaaaaaaaaaaaaaa": must be a Linux interface'
                                       " name (1 to 15 bytes, no '/', ':' or spaces)"),
    ("block.0", "addresses", ["198.51.100.300"], 'block[0].addresses[0] = "198.51.100.300": not an IP address'),
    ("block.0", "addresses", ["fe80::1%eth1"], 'block[0].addresses[0] = "fe80::1%eth1": not an IP address'),
    ("block.0", "addresses", ["192.0.2.7/24"], 'block[0].addresses[0] = "192.0.2.7/24": not an IP address'),
    ("block.0", "addresses", ["224.0.0.1"], 'block[0].addresses[0] = "224.0.0.1": must be a unicast address'),
    ("block.0", "addresses", "192.0.2.1", 'block[0].addresses = "192.0.2.1": must be a list of strings'),
    ("block.0", "prefixes", ["198.18.0.1/16"],
     'block[0].prefixes[0] = "198.18.0.1/16": has host bits set (did you mean 198.18.0.0/16?)'),
    ("block.0", "prefixes", ["2001:db8::/64"],
     'block[0].prefixes[0] = "2001:db8::/64": an IPv6 prefix must be /116 or longer (at most 4,096 addresses)'),
    ("block.0", "prefixes", ["10.0.0.0/7"], 'block[0].prefixes[0] = "10.0.0.0/7": an IPv4 prefix must be /8 or longer'),
    ("block.0", "prefixes", ["198.18.0.0"], 'block[0].prefixes[0] = "198.18.0.0": not an IP prefix (ADDRESS/LENGTH)'),
    ("block.0.announce", "arp_mode", "both", 'block[0].announce.arp_mode = "both": must be "request" or "reply"'),
    ("block.0.announce", "refresh", 0.5, "block[0].announce.refresh = 0.5: must be 0 (off) or a number from 1 to 86400"),
    ("block.0.announce", "rounds", 0, "block[0].announce.rounds = 0: must be an integer from 1 to 100"),
    ("block.0.announce", "round_delay", 0.05, "block[0].announce.round_delay = 0.05: must be a number from 0.1 to 3600"),
    ("block.0.announce", "pps", -1, "block[0].announce.pps = -1: must be an integer from 0 to 10000000"),
])
def test_error_message(workdir: Path, where: str, key: str, value: object, expected: str) -> None:
    assert one_error(workdir, with_change(where, key, value)) == f"DIR/dpagent.toml: {expected}"


def test_heartbeat_peers_must_share_one_ip_version(workdir: Path) -> None:
    document = minimal()
    document["heartbeat"] = [{"interface": "eth0", "peers": ["192.0.2.2", "2001:db8::2"]}]
    assert one_error(workdir, document) == (
        'DIR/dpagent.toml: heartbeat[0].peers[1] = "2001:db8::2": is IPv6, but 192.0.2.2 is IPv4:'
        " one link speaks one IP version")


def test_control_socket_too_long(workdir: Path) -> None:
    line = one_error(workdir, with_change("control", "socket", "/" + "s" * 107))
    assert line == 'DIR/dpagent.toml: control.socket = "/' + "s" * 75 + '...: must be at most 107 bytes long (a Unix socket path)'


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: d.pop("heartbeat"), "heartbeat: at least one [[heartbeat]] link is required"),
    (lambda d: d.update(heartbeat={"interface": "eth0"}),
     'heartbeat = {interface = "eth0"}: must be an array of tables ([[heartbeat]])'),
    (lambda d: d.pop("block"), "block: at least one [[block]] is required"),
    (lambda d: d["node"].pop("id"), "node.id: is required"),
    (lambda d: d.pop("auth"), "auth.key_file: is required"),
    (lambda d: d.update(node=5), "node = 5: must be a table"),
    (lambda d: d.update(extra=1), "extra = 1: unknown key"),
    (lambda d: d["heartbeat"][0].pop("group"), "heartbeat[0]: needs a group or peers"),
    (lambda d: d.update(heartbeat=[{"interface": "eth0", "peers": []}]),
     "heartbeat[0].peers = []: must list at least one address"),
    (lambda d: d.update(heartbeat=[{"interface": "eth0", "peers": ["ff02::1"]}]),
     'heartbeat[0].peers[0] = "ff02::1": must be a unicast address'),
    (lambda d: d["heartbeat"].append({"interface": "eth0", "group": "224.0.0.18"}),
     'heartbeat[1].interface = "eth0": already used by heartbeat[0]'),
    (lambda d: d["block"][0].pop("addresses"), "block[0]: has no addresses: give prefixes, addresses or address_files"),
    (lambda d: d["block"].append({"name": "ext", "interface": "eth1", "addresses": ["192.0.2.11"]}),
     'block[1].name = "ext": already used by block[0]'),
])
def test_structural_errors(workdir: Path, change, expected: str) -> None:
    document = minimal()
    change(document)
    assert one_error(workdir, document) == f"DIR/dpagent.toml: {expected}"


def test_all_errors_are_collected(workdir: Path) -> None:
    document = minimal()
    document["node"] = {"id": -1, "priority": 0, "colour": "red"}
    document["heartbeat"][0]["port"] = 70000
    document["block"][0]["addresses"] = ["x", "y"]
    (workdir / "key").chmod(0o644)
    lines = [line.replace(str(workdir), "DIR") for line in error_lines(workdir, document)]
    assert lines == [
        "DIR/dpagent.toml: node.colour = \"red\": unknown key",
        "DIR/dpagent.toml: node.id = -1: must be an integer from 1 to 4294967295",
        "DIR/dpagent.toml: node.priority = 0: must be an integer from 1 to 254",
        'DIR/dpagent.toml: auth.key_file = "DIR/key": is world-readable (mode 0644): chmod 600 it',
        "DIR/dpagent.toml: heartbeat[0].port = 70000: must be an integer from 1 to 65535",
        'DIR/dpagent.toml: block[0].addresses[0] = "x": not an IP address',
        'DIR/dpagent.toml: block[0].addresses[1] = "y": not an IP address',
    ]


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "dpagent.toml"
    path.write_text("[node]\nid = = 1\n")
    with pytest.raises(ConfigInvalid) as caught:
        load_config(path)
    assert caught.value.errors == (ConfigError("", None, "Invalid value (at line 2, column 6)"),)
    assert format_errors(path, caught.value.errors) == f"{path}: Invalid value (at line 2, column 6)"
    with pytest.raises(ConfigInvalid) as caught:
        load_config(tmp_path / "absent.toml")
    assert format_errors("x.toml", caught.value.errors) == "x.toml: cannot read: No such file or directory"


def test_config_reports_key_file_errors(workdir: Path) -> None:
    (workdir / "key").write_text("")
    assert one_error(workdir, minimal()) == (
        'DIR/dpagent.toml: auth.key_file = "DIR/key": contains no keys (expected lines of KEY_ID SECRET_HEX)')



# --- property: nothing but ConfigInvalid ---------------------------------------------------

SCALARS = st.one_of(
    st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(),
    st.sampled_from(["eth0", "eth1", "224.0.0.18", "ff02::12", "192.0.2.1", "198.18.0.0/16", "2001:db8::/112",
                     "2001:db8::/64", "key", "addr", "request", "reply", "", ".", "a/b", "0.0.0.0/0"]),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=20),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)


def table(keys: tuple[str, ...]) -> st.SearchStrategy[dict]:
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), VALUES, max_size=len(keys) + 1)


def schema_table(path: str) -> st.SearchStrategy[dict]:
    return table(tuple(k.name for k in TABLES_BY_PATH[path] if k.name != "announce"))


NODE = schema_table("node")
HEARTBEAT = schema_table("heartbeat")
BLOCK = st.builds(
    lambda t, announce: {**t, "announce": announce} if announce is not None else t,
    schema_table("block"),
    st.none() | schema_table("block.announce") | VALUES,
)
DOCUMENT = st.fixed_dictionaries({}, optional={
    "node": NODE | VALUES,
    "auth": st.fixed_dictionaries({"key_file": st.sampled_from(["key", "addr", "nokey"]) | VALUES}) | VALUES,
    "control": table(("socket",)),
    "heartbeat": st.lists(HEARTBEAT, max_size=3) | VALUES,
    "block": st.lists(BLOCK, max_size=3) | VALUES,
    "extra": VALUES,
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=DOCUMENT)
def test_random_documents_raise_only_config_invalid(workdir: Path, document: dict) -> None:
    (workdir / "addr").write_text("192.0.2.1\n# c\n\n2001:db8::1\n")
    path = write(workdir, copy.deepcopy(document))
    try:
        load_config(path)
    except ConfigInvalid as e:
        assert e.errors
        for line in format_errors(path, e.errors).splitlines():
            assert re.match(re.escape(str(path)) + ": ", line)


def valid_document() -> dict:
    document = minimal()
    document["control"] = {"socket": "ctl.sock"}
    document["heartbeat"].append({"interface": "eth2", "peers": ["192.0.2.2"]})
    document["block"][0].update(prefixes=["198.18.0.0/24"], address_files=["addr"],
                                announce={"pps": 10, "arp_mode": "reply"})
    document["block"].append({"name": "b", "interface": "eth1", "prefixes": ["2001:db8:1::/120"]})
    return document


def tables_in(document: dict) -> list[dict]:
    found = [document]
    for value in document.values():
        items = value if isinstance(value, list) else [value]
        found += [t for item in items if isinstance(item, dict) for t in tables_in(item)]
    return found


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_valid_documents_raise_only_config_invalid(workdir: Path, data) -> None:
    """Start from a valid document and break a few of its values: the deep checks run too."""
    (workdir / "addr").write_text("192.0.2.1\n# c\n\n2001:db8::1\n")
    document = valid_document()
    for _ in range(data.draw(st.integers(1, 3))):
        target = data.draw(st.sampled_from(tables_in(document)))
        key = data.draw(st.sampled_from(sorted(target) or [""]) | st.text(max_size=6))
        target[key] = data.draw(VALUES | st.sampled_from(["198.18.0.7", "198.18.0.0/25", "eth1", "ext", "b"]))
    path = write(workdir, document)
    try:
        config = load_config(path)
    except ConfigInvalid as e:
        assert all(line.startswith(f"{path}: ") for line in format_errors(path, e.errors).splitlines())
    else:
        assert all(block.address_count > 0 for block in config.blocks)
