"""The gate's nftables ruleset: libnftables JSON commands as plain dicts, and the lease commands as text.

A block is served only while its lease holds. Per block, table `inet dpagent`
and table `arp dpagent` (the ARP hook exists only in the arp family, and a rule
can only use sets of its own table) each hold the block's members (a plain set
for loose addresses, an interval set for prefixes: a plain set loads 65,536
addresses 4x faster), a lease set whose elements carry a timeout of one dead
interval, and base chains of the block's own that drop, while the lease is
absent: packets to block addresses this node would deliver locally (inet
prerouting, before conntrack), ARP with a block address as sender (arp
output: replies and kernel GARP / requests alike), and neighbour solicitations
and advertisements from block addresses (inet output: the kernel sends an NA
for its own address from that address; nftables 1.0.6 has no ND target field).

Why per block chains and a lease keyed by protocol: nftables cannot look up a
constant (nor a map's result), so "is block B leased" must be a lookup keyed by
something of the packet that is the same for every packet the rule sees.
`meta nfproto` (ipv4, ipv6) in inet and `meta protocol` (arp) in arp are that;
B's lease set holds those values while B is open. Chains and sets named after
the block are created and deleted by name, so a block comes and goes in one
transaction without rule handles.

Leases are text commands, not JSON: libnftables 1.0.6 reads JSON timeouts as
whole seconds and silently drops a fractional one (an element that never
expires); dead intervals are often below a second. A plain re-add does not
refresh an element's expiry; `timeout T expires T` does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from agent.core.reload import BlockLike

TABLE = "dpagent"
FAMILIES = ("inet", "arp")
# Block names become parts of nft identifiers, also in text commands.
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# raw: before conntrack (-200), so a closed gate makes no conntrack entries.
PRIORITY_RAW = -300
# What each table's lease set holds while the block is open, and the key it is looked up by.
LEASE_KEYS = {"inet": ("nf_proto", "nfproto", ("ipv4", "ipv6")), "arp": ("ether_type", "protocol", ("arp",))}
KINDS = ("addr4", "net4", "addr6", "net6")


@dataclass(frozen=True)
class Members:
    """A block's addresses as the gate holds them: loose ones and prefixes, per IP version,
    in the block's order (sorting 65,536 ipaddress objects costs more than loading them)."""

    addr4: tuple[IPv4Address, ...] = ()
    net4: tuple[IPv4Network, ...] = ()
    addr6: tuple[IPv6Address, ...] = ()
    net6: tuple[IPv6Network, ...] = ()


def members(block: BlockLike) -> Members:
    """Raises ValueError for anything that is not an ipaddress value: nothing else may
    reach libnftables, which would try to resolve an unknown word as a host name."""
    check_name(block.name)
    found: dict[str, list] = {kind: [] for kind in KINDS}
    for net in block.prefixes:
        found[_kind(block.name, net, IPv4Network, IPv6Network, "net")].append(net)
    for address in block.addresses:
        found[_kind(block.name, address, IPv4Address, IPv6Address, "addr")].append(address)
    return Members(**{kind: tuple(dict.fromkeys(values)) for kind, values in found.items()})


def changed(old: Members, new: Members) -> int:
    """How many members one is to be added or removed to turn `old` into `new`."""
    return sum(len(set(getattr(old, kind)) ^ set(getattr(new, kind))) for kind in KINDS)


def _kind(name: str, value: object, v4: type, v6: type, prefix: str) -> str:
    if isinstance(value, v4):
        return f"{prefix}4"
    if isinstance(value, v6):
        return f"{prefix}6"
    raise ValueError(f"block {name}: {value!r} is not an IP {'prefix' if prefix == 'net' else 'address'}")


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"block name {name!r} is not 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'")
    return name


def set_name(kind: str, block: str) -> str:
    """Kind first: nft identifiers must start with a letter, and '.' never occurs in a block name."""
    return f"{kind}.{block}"


# --- JSON commands -----------------------------------------------------------------------


def document(commands: Iterable[dict]) -> dict:
    return {"nftables": list(commands)}


def _table(family: str) -> dict:
    return {"table": {"family": family, "name": TABLE}}


def delete_tables() -> list[dict]:
    """Both tables gone, whether or not they existed (the add makes the delete never fail)."""
    return [command for family in FAMILIES for command in ({"add": _table(family)}, {"delete": _table(family)})]


def _sets(family: str) -> tuple[str, ...]:
    return KINDS if family == "inet" else ("addr4", "net4")


def _set(family: str, kind: str, block: str) -> dict:
    """A set's definition, without elements."""
    definition = {"family": family, "table": TABLE, "name": set_name(kind, block)}
    if kind == "lease":
        return {**definition, "type": LEASE_KEYS[family][0], "flags": ["timeout"]}
    definition["type"] = "ipv4_addr" if kind.endswith("4") else "ipv6_addr"
    if kind.startswith("net"):
        definition["flags"] = ["interval"]
    return definition


def _chains(family: str, block: str) -> list[dict]:
    hooks = (("prerouting", PRIORITY_RAW), ("output", PRIORITY_RAW)) if family == "inet" else (("output", 0),)
    return [{"family": family, "table": TABLE, "name": f"{hook}.{block}", "type": "filter", "hook": hook,
             "prio": prio, "policy": "accept"} for hook, prio in hooks]


def _elements(kind: str, values: Iterable) -> list:
    if kind.startswith("net"):
        return [{"prefix": {"addr": str(n.network_address), "len": n.prefixlen}} for n in values]
    return [str(a) for a in values]


def _payload(protocol: str, field: str) -> dict:
    return {"payload": {"protocol": protocol, "field": field}}


def _match(left: dict, right: object, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def _rules(family: str, block: str) -> list[dict]:
    """(chain, expressions) of every rule of the block in one table."""
    _type, key, _values = LEASE_KEYS[family]
    unleased = _match({"meta": {"key": key}}, f"@{set_name('lease', block)}", "!=")
    local = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
    nd = _match(_payload("icmpv6", "type"), {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]})
    drop = {"drop": None}
    rules = []
    for kind in _sets(family):
        members_of = f"@{set_name(kind, block)}"
        if family == "arp":
            rules.append((f"output.{block}", [_match(_payload("arp", "saddr ip"), members_of), unleased, drop]))
            continue
        ip = "ip" if kind.endswith("4") else "ip6"
        rules.append((f"prerouting.{block}", [_match(_payload(ip, "daddr"), members_of), unleased, local, drop]))
        if ip == "ip6":
            rules.append((f"output.{block}", [_match(_payload(ip, "saddr"), members_of), nd, unleased, drop]))
    comment = f"dpagent: block {block} closed unless leased"
    return [{"family": family, "table": TABLE, "chain": chain, "expr": expr, "comment": comment}
            for chain, expr in rules]


def add_block(block: BlockLike) -> list[dict]:
    """The block's sets (with its members), lease set and chains: its gate, closed."""
    held = members(block)
    # One list per kind, shared by both tables' sets.
    elements = {kind: _elements(kind, getattr(held, kind)) for kind in KINDS}
    commands = []
    for family in FAMILIES:
        commands.append({"add": _table(family)})
        for kind in _sets(family):
            definition = _set(family, kind, block.name)
            if elements[kind]:
                definition["elem"] = elements[kind]
            commands.append({"add": {"set": definition}})
        commands.append({"add": {"set": _set(family, "lease", block.name)}})
        commands += [{"add": {"chain": chain}} for chain in _chains(family, block.name)]
        commands += [{"add": {"rule": rule}} for rule in _rules(family, block.name)]
    return commands


def remove_block(name: str) -> list[dict]:
    """Every object of the block gone, whether or not it existed: each is added (a no-op
    when there) before it is deleted, so an operator's `flush ruleset` never makes this fail."""
    check_name(name)
    commands = []
    for family in FAMILIES:
        commands.append({"add": _table(family)})
        for chain in _chains(family, name):
            ref = {"family": family, "table": TABLE, "name": chain["name"]}
            commands += [{"add": {"chain": chain}}, {"flush": {"chain": ref}}, {"delete": {"chain": ref}}]
        for kind in (*_sets(family), "lease"):
            ref = {"family": family, "table": TABLE, "name": set_name(kind, name)}
            commands += [{"add": {"set": _set(family, kind, name)}}, {"delete": {"set": ref}}]
    return commands


def rebuild(block: BlockLike) -> list[dict]:
    """The block's gate as `block` defines it, closed, replacing whatever was there."""
    return remove_block(block.name) + add_block(block)


def rule_counts(name: str) -> dict[tuple[str, str], int]:
    """(family, chain) -> how many rules the block's intact gate has there."""
    counts: dict[tuple[str, str], int] = {}
    for family in FAMILIES:
        for chain in _chains(family, check_name(name)):
            counts[(family, chain["name"])] = 0
        for rule in _rules(family, name):
            counts[(family, rule["chain"])] += 1
    return counts


def list_chain(family: str, chain: str) -> dict:
    return {"list": {"chain": {"family": family, "table": TABLE, "name": chain}}}


def rules_in(listing: object) -> int:
    """The rules in a JSON listing (libnftables' parsed output)."""
    items = listing.get("nftables", []) if isinstance(listing, dict) else []
    return sum(1 for item in items if "rule" in item)


# Every table's family and name; nothing else of any table is read.
LIST_TABLES = {"list": {"tables": None}}


def our_tables(listing: object) -> list[str]:
    """The families in which a JSON listing of tables has a table dpagent."""
    items = listing.get("nftables", []) if isinstance(listing, dict) else []
    return [item["table"]["family"] for item in items
            if "table" in item and item["table"].get("name") == TABLE]


def member_changes(name: str, old: Members, new: Members) -> list[dict]:
    """The set deltas from `old` to `new`, deletes first: applied in one transaction, an
    address that stays is never outside the gate, and a prefix can be split or joined."""
    check_name(name)
    deletes, adds = [], []
    for kind in KINDS:
        before, after = set(getattr(old, kind)), set(getattr(new, kind))
        for values, into in ((before - after, deletes), (after - before, adds)):
            if values:
                into.append((kind, _elements(kind, sorted(values, key=_order))))
    return [{verb: {"element": {"family": family, "table": TABLE, "name": set_name(kind, name), "elem": elem}}}
            for verb, changes in (("delete", deletes), ("add", adds)) for family in FAMILIES
            for kind, elem in changes if kind in _sets(family)]


def _order(value: IPv4Address | IPv6Address | IPv4Network | IPv6Network) -> tuple[int, int]:
    return (int(value.network_address), value.prefixlen) if hasattr(value, "prefixlen") else (int(value), 0)


# --- lease commands (text) -----------------------------------------------------------------


def lease_ms(seconds: float) -> int:
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"lease of {seconds!r} s: it must be a positive number of seconds")
    return max(1, round(seconds * 1000))


def _lease_elements(family: str, name: str, ms: int, verb: str = "add") -> str:
    values = LEASE_KEYS[family][2]
    timed = ", ".join(f"{v} timeout {ms}ms expires {ms}ms" if verb == "add" else v for v in values)
    return f"{verb} element {family} {TABLE} {set_name('lease', check_name(name))} {{ {timed} }}"


def arm(names: Sequence[str], lease: float) -> str:
    """Open (or keep open) these blocks for one lease from now: one transaction."""
    ms = lease_ms(lease)
    return "\n".join(_lease_elements(family, name, ms) for name in names for family in FAMILIES)


def disarm(names: Sequence[str], lease: float) -> str:
    """Close these blocks now. Arming first makes the delete find its element, also when
    the lease had run out or was about to between the two."""
    ms = lease_ms(lease)
    return "\n".join(_lease_elements(family, name, ms, verb) for name in names for family in FAMILIES
                     for verb in ("add", "delete"))


def list_lease(family: str, name: str) -> str:
    """One set per command: libnftables 1.0.6 lists only the last of several `list set`s."""
    return f"list set {family} {TABLE} {set_name('lease', check_name(name))}"


_EXPIRES = re.compile(r"expires ((?:\d+(?:ms|d|h|m|s))+)")
_PART = re.compile(r"(\d+)(ms|d|h|m|s)")
_UNIT = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def lease_left(family: str, listing: str) -> float | None:
    """Seconds until the first element of a listed lease set expires; None unless every
    element the family's lease needs is there."""
    found = [sum(int(n) * _UNIT[u] for n, u in _PART.findall(m)) for m in _EXPIRES.findall(listing)]
    if len(found) < len(LEASE_KEYS[family][2]):
        return None
    return min(found)
