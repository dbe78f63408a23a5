"""agent.core.ruleset: the gate's nftables documents, its lease commands, and set deltas."""

from __future__ import annotations

import json
from dataclasses import dataclass
from ipaddress import ip_address, ip_network

import pytest

from agent.core import ruleset


@dataclass(frozen=True)
class B:
    name: str
    interface: str = "eth1"
    prefixes: tuple = ()
    addresses: tuple = ()


def nets(*texts: str) -> tuple:
    return tuple(ip_network(t) for t in texts)


def addrs(*texts: str) -> tuple:
    return tuple(ip_address(t) for t in texts)


EXT = B("ext", prefixes=nets("198.18.0.0/24", "198.18.2.0/23", "2001:db8:1::/124"),
        addresses=addrs("203.0.113.7", "203.0.113.9", "2001:db8:2::7"))


def objects(commands: list[dict], verb: str, kind: str) -> list[dict]:
    return [c[verb][kind] for c in commands if verb in c and kind in c[verb]]


def sets_of(commands: list[dict]) -> dict[tuple[str, str], dict]:
    return {(s["family"], s["name"]): s for s in objects(commands, "add", "set")}


def test_every_command_names_table_dpagent_and_no_other():
    commands = ruleset.rebuild(EXT) + ruleset.delete_tables() + ruleset.member_changes(
        "ext", ruleset.members(EXT), ruleset.members(B("ext")))
    for command in commands:
        ((verb, body),) = command.items()
        ((kind, obj),) = body.items()
        assert (obj["name"] if kind == "table" else obj["table"]) == ruleset.TABLE, command
        assert obj["family"] in ("inet", "arp")
    json.dumps(ruleset.document(commands))


def test_a_block_of_both_versions_loads_loose_addresses_into_plain_sets_and_prefixes_into_interval_sets():
    sets = sets_of(ruleset.add_block(EXT))
    assert sets[("inet", "addr4.ext")]["elem"] == ["203.0.113.7", "203.0.113.9"]
    assert "flags" not in sets[("inet", "addr4.ext")]
    assert sets[("inet", "net4.ext")]["flags"] == ["interval"]
    assert sets[("inet", "net4.ext")]["elem"] == [{"prefix": {"addr": "198.18.0.0", "len": 24}},
                                                 {"prefix": {"addr": "198.18.2.0", "len": 23}}]
    assert sets[("inet", "addr6.ext")] == {"family": "inet", "table": "dpagent", "name": "addr6.ext",
                                           "type": "ipv6_addr", "elem": ["2001:db8:2::7"]}
    assert sets[("inet", "net6.ext")]["elem"] == [{"prefix": {"addr": "2001:db8:1::", "len": 124}}]
    # ARP carries IPv4 only; the arp table's sets are its own copies.
    assert sets[("arp", "addr4.ext")]["elem"] == sets[("inet", "addr4.ext")]["elem"]
    assert sets[("arp", "net4.ext")]["elem"] == sets[("inet", "net4.ext")]["elem"]
    assert ("arp", "addr6.ext") not in sets
    # The leases start empty: a prepared gate is closed.
    assert sets[("inet", "lease.ext")] == {"family": "inet", "table": "dpagent", "name": "lease.ext",
                                           "type": "nf_proto", "flags": ["timeout"]}
    assert sets[("arp", "lease.ext")]["type"] == "ether_type"
    assert "elem" not in sets[("arp", "lease.ext")]


def test_an_empty_kind_gets_an_empty_set_so_an_adjust_can_fill_it():
    sets = sets_of(ruleset.add_block(B("v4only", prefixes=nets("198.18.0.0/16"))))
    assert "elem" not in sets[("inet", "addr6.ext".replace("ext", "v4only"))]
    assert len(sets) == 5 + 3


def test_chains_hook_prerouting_before_conntrack_and_both_outputs():
    chains = {(c["family"], c["name"]): c for c in objects(ruleset.add_block(EXT), "add", "chain")}
    assert chains[("inet", "prerouting.ext")]["hook"] == "prerouting"
    assert chains[("inet", "prerouting.ext")]["prio"] < -200
    assert chains[("inet", "output.ext")]["hook"] == "output"
    assert chains[("arp", "output.ext")]["hook"] == "output"
    assert all(c["type"] == "filter" and c["policy"] == "accept" for c in chains.values())


def test_every_rule_drops_block_traffic_only_while_the_lease_is_absent():
    rules = objects(ruleset.add_block(EXT), "add", "rule")
    by_chain: dict[tuple[str, str], list[list[dict]]] = {}
    for rule in rules:
        by_chain.setdefault((rule["family"], rule["chain"]), []).append(rule["expr"])
        assert rule["expr"][-1] == {"drop": None}
        unleased = [e["match"] for e in rule["expr"] if "match" in e and e["match"]["right"] == "@lease.ext"]
        assert len(unleased) == 1 and unleased[0]["op"] == "!="
    assert {key: len(v) for key, v in by_chain.items()} == ruleset.rule_counts("ext")
    incoming = by_chain[("inet", "prerouting.ext")]
    assert [e[0]["match"]["right"] for e in incoming] == ["@addr4.ext", "@net4.ext", "@addr6.ext", "@net6.ext"]
    assert all({"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}}
               in e for e in incoming)
    arp = by_chain[("arp", "output.ext")]
    assert [e[0]["match"]["left"] for e in arp] == [{"payload": {"protocol": "arp", "field": "saddr ip"}}] * 2
    nd = by_chain[("inet", "output.ext")]
    assert all(e[1]["match"]["right"] == {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]} for e in nd)


def test_remove_block_adds_each_object_before_deleting_it_so_it_never_fails_on_a_missing_one():
    commands = ruleset.remove_block("ext")
    for kind in ("chain", "set"):
        added = [(o["family"], o["name"]) for o in objects(commands, "add", kind)]
        deleted = [(o["family"], o["name"]) for o in objects(commands, "delete", kind)]
        assert added == deleted and len(deleted) == len(set(deleted))
        for key in deleted:
            first_add = next(i for i, c in enumerate(commands) if kind in c.get("add", {})
                             and (c["add"][kind]["family"], c["add"][kind]["name"]) == key)
            delete = next(i for i, c in enumerate(commands) if kind in c.get("delete", {})
                          and (c["delete"][kind]["family"], c["delete"][kind]["name"]) == key)
            assert first_add < delete
    # Rules go with their chains (flushed first), before the sets of their table they use.
    for family in ruleset.FAMILIES:
        deletes = [(i, kind) for i, c in enumerate(commands) for kind, o in c.get("delete", {}).items()
                   if o["family"] == family]
        assert max(i for i, k in deletes if k == "chain") < min(i for i, k in deletes if k == "set")
    assert ruleset.rebuild(EXT)[: len(commands)] == commands


def test_delete_tables_never_fails_on_a_missing_table():
    assert ruleset.delete_tables() == [
        {"add": {"table": {"family": "inet", "name": "dpagent"}}},
        {"delete": {"table": {"family": "inet", "name": "dpagent"}}},
        {"add": {"table": {"family": "arp", "name": "dpagent"}}},
        {"delete": {"table": {"family": "arp", "name": "dpagent"}}},
    ]


# --- leases ------------------------------------------------------------------------------


def test_arming_sets_timeout_and_expires_which_is_what_refreshes_an_existing_element():
    text = ruleset.arm(["ext", "int-2"], 0.15)
    assert text.splitlines() == [
        "add element inet dpagent lease.ext { ipv4 timeout 150ms expires 150ms, ipv6 timeout 150ms expires 150ms }",
        "add element arp dpagent lease.ext { arp timeout 150ms expires 150ms }",
        "add element inet dpagent lease.int-2 { ipv4 timeout 150ms expires 150ms, ipv6 timeout 150ms expires 150ms }",
        "add element arp dpagent lease.int-2 { arp timeout 150ms expires 150ms }",
    ]


def test_disarming_arms_first_so_the_delete_finds_its_element():
    lines = ruleset.disarm(["ext"], 3).splitlines()
    assert lines == [
        "add element inet dpagent lease.ext { ipv4 timeout 3000ms expires 3000ms, ipv6 timeout 3000ms expires 3000ms }",
        "delete element inet dpagent lease.ext { ipv4, ipv6 }",
        "add element arp dpagent lease.ext { arp timeout 3000ms expires 3000ms }",
        "delete element arp dpagent lease.ext { arp }",
    ]


@pytest.mark.parametrize("seconds, ms", [(0.15, 150), (1, 1000), (0.0004, 1), (2.0006, 2001)])
def test_lease_in_milliseconds(seconds, ms):
    assert ruleset.lease_ms(seconds) == ms


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf")])
def test_a_lease_that_would_never_or_always_expire_is_refused(seconds):
    with pytest.raises(ValueError):
        ruleset.lease_ms(seconds)


def test_lease_left_reads_the_earliest_expiry_and_needs_every_element():
    listing = ("table inet dpagent {\n\tset lease.ext {\n\t\ttype nf_proto\n\t\tflags timeout\n"
               "\t\telements = { ipv4 timeout 2s500ms expires 1s496ms, ipv6 timeout 2s500ms expires 1s495ms }\n"
               "\t}\n}\n")
    assert ruleset.lease_left("inet", listing) == pytest.approx(1.495)
    assert ruleset.lease_left("arp", "elements = { arp timeout 1m expires 1m2s3ms }") == pytest.approx(62.003)
    assert ruleset.lease_left("inet", "elements = { ipv4 timeout 150ms expires 97ms }") is None
    assert ruleset.lease_left("arp", "set lease.ext {\n\t\ttype ether_type\n\t\tflags timeout\n\t}") is None


# --- deltas --------------------------------------------------------------------------------


def delta(old: B, new: B) -> list[dict]:
    return ruleset.member_changes(new.name, ruleset.members(old), ruleset.members(new))


def test_no_change_no_commands():
    assert delta(EXT, EXT) == []
    assert ruleset.changed(ruleset.members(EXT), ruleset.members(EXT)) == 0


def test_deltas_delete_first_then_add_in_both_tables_for_ipv4():
    new = B("ext", prefixes=nets("198.18.0.0/24", "198.18.2.0/23", "2001:db8:1::/124"),
            addresses=addrs("203.0.113.7", "203.0.113.8", "2001:db8:2::8"))
    commands = delta(EXT, new)
    verbs = [next(iter(c)) for c in commands]
    assert verbs == sorted(verbs, key=["delete", "add"].index)
    changes = {(verb, c[verb]["element"]["family"], c[verb]["element"]["name"]): c[verb]["element"]["elem"]
               for c in commands for verb in c}
    assert changes == {
        ("delete", "inet", "addr4.ext"): ["203.0.113.9"], ("delete", "arp", "addr4.ext"): ["203.0.113.9"],
        ("delete", "inet", "addr6.ext"): ["2001:db8:2::7"],
        ("add", "inet", "addr4.ext"): ["203.0.113.8"], ("add", "arp", "addr4.ext"): ["203.0.113.8"],
        ("add", "inet", "addr6.ext"): ["2001:db8:2::8"],
    }
    assert ruleset.changed(ruleset.members(EXT), ruleset.members(new)) == 4


def test_prefixes_are_split_or_joined_in_one_delete_and_add():
    old = B("ext", prefixes=nets("198.18.0.0/24", "198.18.1.0/24"))
    new = B("ext", prefixes=nets("198.18.0.0/23"))
    commands = [c for c in delta(old, new) if next(iter(c.values()))["element"]["family"] == "inet"]
    assert commands == [
        {"delete": {"element": {"family": "inet", "table": "dpagent", "name": "net4.ext", "elem": [
            {"prefix": {"addr": "198.18.0.0", "len": 24}}, {"prefix": {"addr": "198.18.1.0", "len": 24}}]}}},
        {"add": {"element": {"family": "inet", "table": "dpagent", "name": "net4.ext", "elem": [
            {"prefix": {"addr": "198.18.0.0", "len": 23}}]}}},
    ]


def test_a_prefix_replaced_by_an_address_inside_it_moves_to_the_plain_set():
    old = B("ext", prefixes=nets("2001:db8:1::/124"))
    new = B("ext", addresses=addrs("2001:db8:1::5"))
    assert delta(old, new) == [
        {"delete": {"element": {"family": "inet", "table": "dpagent", "name": "net6.ext",
                                "elem": [{"prefix": {"addr": "2001:db8:1::", "len": 124}}]}}},
        {"add": {"element": {"family": "inet", "table": "dpagent", "name": "addr6.ext", "elem": ["2001:db8:1::5"]}}},
    ]


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("block", [
    B("ext", addresses=("198.18.0.1",)),             # a string libnftables might resolve as a host name
    B("ext", prefixes=(ip_address("198.18.0.1"),)),  # an address where a prefix belongs
    B("ext", addresses=(None,)),
    B("a b"), B(""), B('x" }; flush ruleset; #'), B("x" * 65), B(7),
])
def test_bad_input_raises_value_error_before_any_command_exists(block):
    with pytest.raises(ValueError):
        ruleset.add_block(block)


def test_names_of_different_blocks_never_collide():
    names = [n for block in ("a", "a_v4", "net4", "lease", "4") for n in
             {(s["family"], s["name"]) for s in objects(ruleset.add_block(B(block)), "add", "set")}]
    assert len(names) == len(set(names))


def test_listings_are_read_defensively():
    tables = {"nftables": [{"metainfo": {}}, {"table": {"family": "inet", "name": "filter"}},
                           {"table": {"family": "inet", "name": "dpagent"}},
                           {"table": {"family": "arp", "name": "dpagent"}}]}
    assert ruleset.our_tables(tables) == ["inet", "arp"]
    assert ruleset.our_tables("") == [] and ruleset.rules_in("") == 0
    assert ruleset.rules_in({"nftables": [{"chain": {}}, {"rule": {}}, {"rule": {}}]}) == 2
