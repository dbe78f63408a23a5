"""agent.core.ruleset: the gate's nftables documents, its lease commands, and set deltas."""

from __future__ import annotations

import json
import struct
from ipaddress import ip_address, ip_network

import pytest

from agent.config import Block
from agent.core import ruleset


def block(name: object, *members: str) -> Block:
    """Members as text: with a '/' a prefix, without one a loose address."""
    return Block(name, "eth1", tuple(ip_network(m) for m in members if "/" in m),  # type: ignore[arg-type]
                 tuple(ip_address(m) for m in members if "/" not in m))


EXT = block("ext", "198.18.0.0/24", "198.18.2.0/23", "2001:db8:1::/124", "203.0.113.7", "203.0.113.9",
            "2001:db8:2::7")


def objects(commands: list[dict], verb: str, kind: str) -> list[dict]:
    return [c[verb][kind] for c in commands if verb in c and kind in c[verb]]


def sets_of(commands: list[dict]) -> dict[tuple[str, str], dict]:
    return {(s["family"], s["name"]): s for s in objects(commands, "add", "set")}


def test_every_command_names_table_dpagent_and_no_other():
    commands = ruleset.rebuild(EXT) + ruleset.delete_tables() + ruleset.member_changes(
        "ext", ruleset.members(EXT), ruleset.members(block("ext")))
    for command in commands:
        ((verb, body),) = command.items()
        ((kind, obj),) = body.items()
        assert (obj["name"] if kind == "table" else obj["table"]) == ruleset.TABLE, command
        assert obj["family"] in ("inet", "arp")
    json.dumps(ruleset.document(commands))


def elements_of(commands: list[dict]) -> dict[tuple[str, str], list]:
    found: dict[tuple[str, str], list] = {}
    for e in objects(commands, "add", "element"):
        found.setdefault((e["family"], e["name"]), []).extend(e["elem"])
    return found


def test_a_block_of_both_versions_loads_loose_addresses_into_plain_sets_and_prefixes_into_interval_sets():
    commands = ruleset.add_block(EXT)
    sets, elements = sets_of(commands), elements_of(commands)
    assert elements[("inet", "addr4.ext")] == ["203.0.113.7", "203.0.113.9"]
    assert "flags" not in sets[("inet", "addr4.ext")]
    assert sets[("inet", "net4.ext")]["flags"] == ["interval"]
    assert elements[("inet", "net4.ext")] == [{"prefix": {"addr": "198.18.0.0", "len": 24}},
                                             {"prefix": {"addr": "198.18.2.0", "len": 23}}]
    assert sets[("inet", "addr6.ext")] == {"family": "inet", "table": "dpagent", "name": "addr6.ext",
                                           "type": "ipv6_addr"}
    assert elements[("inet", "addr6.ext")] == ["2001:db8:2::7"]
    assert elements[("inet", "net6.ext")] == [{"prefix": {"addr": "2001:db8:1::", "len": 124}}]
    # ARP carries IPv4 only; the arp table's sets are its own copies.
    assert elements[("arp", "addr4.ext")] == elements[("inet", "addr4.ext")]
    assert elements[("arp", "net4.ext")] == elements[("inet", "net4.ext")]
    assert ("arp", "addr6.ext") not in sets
    # The leases start empty: a prepared gate is closed.
    assert sets[("inet", "lease.ext")] == {"family": "inet", "table": "dpagent", "name": "lease.ext",
                                           "type": "nf_proto", "flags": ["timeout"]}
    assert sets[("arp", "lease.ext")]["type"] == "ether_type"
    assert not any(name == "lease.ext" for _family, name in elements)


def test_members_come_after_the_whole_gate_so_a_load_in_parts_is_a_gate_from_the_first():
    commands = ruleset.add_block(EXT)
    first_element = next(i for i, c in enumerate(commands) if "element" in c["add"])
    assert all("element" in c["add"] for c in commands[first_element:])
    assert len(objects(commands[:first_element], "add", "rule")) == sum(ruleset.rule_counts(EXT).values())


def test_an_empty_kind_gets_an_empty_set_so_an_adjust_can_fill_it():
    commands = ruleset.add_block(block("v4only", "198.18.0.0/16"))
    assert len(sets_of(commands)) == 5 + 3
    assert set(elements_of(commands)) == {("inet", "net4.v4only"), ("arp", "net4.v4only")}


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
    assert {key: len(v) for key, v in by_chain.items()} == ruleset.rule_counts(EXT)
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


def messages(data: bytes) -> list[ruleset.Reply]:
    return ruleset.replies(data)


def test_arming_is_one_batch_whose_elements_carry_timeout_and_expires_in_milliseconds():
    data, acked = ruleset.lease_batch(["ext", "int-2"], 0.15, 100)
    sent = messages(data)
    assert [m.kind for m in sent] == [ruleset.NFNL_MSG_BATCH_BEGIN] + [10 << 8 | 12] * 4 + [ruleset.NFNL_MSG_BATCH_END]
    assert [m.seq for m in sent] == list(range(100, 106))
    assert acked == {101: "add element inet dpagent lease.ext", 102: "add element arp dpagent lease.ext",
                     103: "add element inet dpagent lease.int-2", 104: "add element arp dpagent lease.int-2"}
    # Timeout and expires both set: that is what refreshes an element that exists.
    assert ruleset.lease_expirations(sent[1].attrs) == {b"\x02": 0.15, b"\x0a": 0.15}
    assert ruleset.lease_expirations(sent[2].attrs) == {b"\x08\x06": 0.15}
    assert b"dpagent\0" in sent[1].attrs and b"lease.ext\0" in sent[1].attrs
    assert b"lease.int-2\0" in sent[3].attrs


def test_closing_arms_first_so_the_delete_finds_its_element():
    data, acked = ruleset.lease_batch(["ext"], 3, 1, close=True)
    sent = messages(data)[1:-1]
    assert [m.kind & 0xFF for m in sent] == [12, 14, 12, 14]
    assert list(acked.values()) == ["add element inet dpagent lease.ext", "delete element inet dpagent lease.ext",
                                    "add element arp dpagent lease.ext", "delete element arp dpagent lease.ext"]
    assert ruleset.lease_expirations(sent[0].attrs) == {b"\x02": 3.0, b"\x0a": 3.0}
    assert ruleset.lease_expirations(sent[1].attrs) == {}


def test_a_bad_name_never_reaches_the_kernel():
    with pytest.raises(ValueError):
        ruleset.lease_batch(["ok", "not ok"], 1, 1)


def test_replies_name_the_request_an_error_answers():
    request = ruleset.lease_dump("inet", "ext", 7)
    error = struct.pack("=IHHII", 16 + 4 + 16, ruleset.NLMSG_ERROR, 0, 99, 0) + struct.pack("=i", -2) + request[:16]
    done = struct.pack("=IHHII", 20, ruleset.NLMSG_DONE, 2, 8, 0) + b"\0" * 4
    assert ruleset.replies(error + done + b"\x01\x02") == [ruleset.Reply(ruleset.NLMSG_ERROR, 7, -2, b""),
                                                          ruleset.Reply(ruleset.NLMSG_DONE, 8, None, b"")]


def test_dumps_read_only_our_table():
    (rules,) = messages(ruleset.rule_dump("arp", 5))
    assert rules.kind == 10 << 8 | ruleset.NFT_MSG_GETRULE and b"dpagent\0" in rules.attrs
    (lease,) = messages(ruleset.lease_dump("inet", "ext", 6))
    assert lease.kind == 10 << 8 | ruleset.NFT_MSG_GETSETELEM and b"lease.ext\0" in lease.attrs


def test_lease_left_needs_every_key_of_the_family():
    assert ruleset.lease_left("inet", {b"\x02": 1.5, b"\x0a": 1.25}) == 1.25
    assert ruleset.lease_left("inet", {b"\x02": 1.5}) is None
    assert ruleset.lease_left("arp", {b"\x08\x06": 0.1}) == 0.1
    assert ruleset.lease_left("arp", {}) is None


@pytest.mark.parametrize("seconds, ms", [(0.15, 150), (1, 1000), (0.0004, 1), (2.0006, 2001)])
def test_lease_in_milliseconds(seconds, ms):
    assert ruleset.lease_ms(seconds) == ms


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf")])
def test_a_lease_that_would_never_or_always_expire_is_refused(seconds):
    with pytest.raises(ValueError):
        ruleset.lease_ms(seconds)


# --- deltas --------------------------------------------------------------------------------


def delta(old: Block, new: Block) -> list[dict]:
    return ruleset.member_changes(new.name, ruleset.members(old), ruleset.members(new))


def test_no_change_no_commands():
    assert delta(EXT, EXT) == []
    assert ruleset.changed(ruleset.members(EXT), ruleset.members(EXT)) == 0


def test_deltas_delete_first_then_add_in_both_tables_for_ipv4():
    new = block("ext", "198.18.0.0/24", "198.18.2.0/23", "2001:db8:1::/124", "203.0.113.7", "203.0.113.8",
                "2001:db8:2::8")
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
    old = block("ext", "198.18.0.0/24", "198.18.1.0/24")
    new = block("ext", "198.18.0.0/23")
    commands = [c for c in delta(old, new) if next(iter(c.values()))["element"]["family"] == "inet"]
    assert commands == [
        {"delete": {"element": {"family": "inet", "table": "dpagent", "name": "net4.ext", "elem": [
            {"prefix": {"addr": "198.18.0.0", "len": 24}}, {"prefix": {"addr": "198.18.1.0", "len": 24}}]}}},
        {"add": {"element": {"family": "inet", "table": "dpagent", "name": "net4.ext", "elem": [
            {"prefix": {"addr": "198.18.0.0", "len": 23}}]}}},
    ]


def test_a_prefix_replaced_by_an_address_inside_it_moves_to_the_plain_set():
    old = block("ext", "2001:db8:1::/124")
    new = block("ext", "2001:db8:1::5")
    assert delta(old, new) == [
        {"delete": {"element": {"family": "inet", "table": "dpagent", "name": "net6.ext",
                                "elem": [{"prefix": {"addr": "2001:db8:1::", "len": 124}}]}}},
        {"add": {"element": {"family": "inet", "table": "dpagent", "name": "addr6.ext", "elem": ["2001:db8:1::5"]}}},
    ]


def test_transactions_cut_element_commands_to_the_limit_and_keep_the_order():
    big = block("big", "198.18.0.0/16", *(f"198.19.0.{i}" for i in range(10)))
    commands = ruleset.add_block(big)
    assert ruleset.transactions(commands, None) == [commands]
    assert ruleset.transactions([], None) == []
    cut = ruleset.transactions(commands, 4)
    assert [c for t in cut for c in t][: len(commands) - 4] == commands[: len(commands) - 4]
    assert all(sum(len(c["add"].get("element", {}).get("elem", ())) for c in t) <= 4 for t in cut)
    # Whatever the cut, the same elements go into the same sets, in the same order.
    assert elements_of([c for t in cut for c in t]) == elements_of(commands)
    # The first transaction is the whole gate, closed.
    assert len(objects(cut[0], "add", "rule")) == sum(ruleset.rule_counts(big).values())


def test_inverse_undoes_a_transaction_of_element_changes_last_first():
    changes = delta(EXT, block("ext", "198.18.0.0/24", "203.0.113.8"))
    undo = ruleset.inverse(changes)
    swap = {"add": "delete", "delete": "add"}
    assert [next(iter(c)) for c in undo] == [swap[next(iter(c))] for c in reversed(changes)]
    assert ruleset.inverse(undo) == changes


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    Block("ext", "eth1", (), ("198.18.0.1",)),                  # a string libnftables might resolve as a host name
    Block("ext", "eth1", (ip_address("198.18.0.1"),), ()),      # an address where a prefix belongs
    Block("ext", "eth1", (), (None,)),
    block("a b"), block(""), block('x" }; flush ruleset; #'), block("x" * 65), block(7),
])
def test_bad_input_raises_value_error_before_any_command_exists(bad):
    with pytest.raises(ValueError):
        ruleset.add_block(bad)


def test_names_of_different_blocks_never_collide():
    names = [n for name in ("a", "a_v4", "net4", "lease", "4") for n in
             {(s["family"], s["name"]) for s in objects(ruleset.add_block(block(name)), "add", "set")}]
    assert len(names) == len(set(names))


def test_rule_chain_reads_the_chain_attribute():
    attrs = ruleset.nla_string(ruleset.NFTA_RULE_TABLE, "dpagent") + ruleset.nla_string(ruleset.NFTA_RULE_CHAIN, "output.ext")
    assert ruleset.rule_chain(attrs) == "output.ext"
    assert ruleset.rule_chain(b"") is None


def test_listings_are_read_defensively():
    tables = {"nftables": [{"metainfo": {}}, {"table": {"family": "inet", "name": "filter"}},
                           {"table": {"family": "inet", "name": "dpagent"}},
                           {"table": {"family": "arp", "name": "dpagent"}}]}
    assert ruleset.our_tables(tables) == ["inet", "arp"]
    assert ruleset.our_tables("") == [] and ruleset.our_tables({"nftables": "x"}) == []


def _nd_checksum(message: bytes) -> int:
    """The ones' complement sum of an ICMPv6 message's words (pseudo-header left out: it
    does not change when the option does)."""
    total = sum(struct.unpack(f"!{len(message) // 2}H", message))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@pytest.mark.parametrize("own", ["3e:74:f4:5a:2f:92", "00:00:00:00:00:00", "ff:ff:ff:ff:ff:fe", "02:00:5e:10:00:01"])
def test_the_reserved_word_keeps_an_advertisements_checksum_when_its_mac_is_rewritten(own: str) -> None:
    shared = "01:00:5e:00:01:01"
    target = ip_address("2001:db8::10").packed
    na = bytes([136, 0, 0, 0, 0x60, 0, 0, 0]) + target + bytes([2, 1]) + bytes.fromhex(own.replace(":", ""))
    assert len(na) == ruleset.ND_WITH_OPTION
    rewritten = bytearray(na)
    rewritten[26:32] = bytes.fromhex(shared.replace(":", ""))
    rewritten[6:8] = ruleset.ndp_fix(own, shared).to_bytes(2, "big")
    assert _nd_checksum(bytes(rewritten)) % 0xFFFF == _nd_checksum(na) % 0xFFFF
    offset, length = ruleset.ND_OPTION_MAC_BITS
    assert (offset // 8, (offset + length) // 8) == (26, 32)


def test_shared_mac_blocks_rewrite_arp_behind_the_drops_and_cluster_mac_also_ndp() -> None:
    from dataclasses import replace

    from agent.config import L2Config
    vmac = replace(EXT, l2=L2Config(mode="vmac", vrid=1, vmac="00:00:5e:00:01:01"))
    cluster = replace(EXT, l2=L2Config(mode="cluster-mac"))
    plain = ruleset.rule_counts(EXT)
    assert ruleset.rule_counts(vmac)[("arp", "output.ext")] == plain[("arp", "output.ext")] + 2
    assert ruleset.rule_counts(vmac)[("inet", "output.ext")] == plain[("inet", "output.ext")]
    assert ruleset.rule_counts(cluster)[("inet", "output.ext")] == plain[("inet", "output.ext")] + 2
    rules = [r for r in objects(ruleset.add_block(cluster, "3e:74:f4:5a:2f:92"), "add", "rule")
             if r["family"] == "arp"]
    # Every drop comes before the first rewrite: an unleased ARP is dropped, never rewritten.
    kinds = ["mangle" if any("mangle" in e for e in r["expr"]) else "drop" for r in rules]
    assert kinds == ["drop", "drop", "mangle", "mangle"]
    assert rules[-1]["expr"][-1] == {"mangle": {"key": {"payload": {"protocol": "arp", "field": "saddr ether"}},
                                                "value": "01:00:5e:00:01:01"}}


def test_loose_addresses_go_in_chunks_that_fit_a_netlink_attribute_and_cover_every_address() -> None:
    loose = [f"198.19.{i >> 8}.{i & 255}" for i in range(10_000)] + [f"2001:db8::{i:x}" for i in range(3_000)]
    held = ruleset.members(block("big", "198.18.0.0/16", *loose))
    chunks = ruleset.member_chunks("big", held)
    assert all(len(c.items) <= ruleset.MEMBER_BATCH_BYTES < 0xFFFF for c in chunks)
    counted: dict[tuple[str, str], int] = {}
    for c in chunks:
        counted[(c.family, c.set)] = counted.get((c.family, c.set), 0) + c.count
    assert counted == {("inet", "addr4.big"): 10_000, ("arp", "addr4.big"): 10_000, ("inet", "addr6.big"): 3_000}
    # The prefix stays a JSON element; the loose addresses are left out of the JSON.
    commands = ruleset.add_block(block("big", "198.18.0.0/16", *loose), plain=False)
    assert {e["name"] for e in objects(commands, "add", "element")} == {"net4.big"}
    data, acked = ruleset.member_batch(chunks[0], 7)
    assert list(acked) == [8] and len(data) > len(chunks[0].items)
