"""The gate's nftables ruleset: libnftables JSON commands as plain dicts, and the lease as nfnetlink messages.

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

A block whose neighbours reach it at a shared MAC (agent.config's l2 modes vmac and
cluster-mac) also has the MAC rewritten where the kernel would put the node's own:
the sender hardware address of ARP packets with a block address as sender (arp
output, behind the gate's drop: replies for vmac, requests too for cluster-mac), and, for cluster-mac IPv6, the link-layer
address option of neighbour solicitations and advertisements from block
addresses (inet output). nftables 1.0.6 knows no ND option field and fixes no
checksum for a raw payload write, so the option's MAC is written as raw bytes
and the checksum kept by writing a compensating word into the message's
reserved field, which receivers ignore (RFC 4861 4.3, 4.4): see `ndp_fix`.

Why per block chains and a lease keyed by protocol: nftables cannot look up a
constant (nor a map's result), so "is block B leased" must be a lookup keyed by
something of the packet that is the same for every packet the rule sees.
`meta nfproto` (ipv4, ipv6) in inet and `meta protocol` (arp) in arp are that;
B's lease set holds those values while B is open. Chains and sets named after
the block are created and deleted by name, so a block comes and goes in one
transaction without rule handles.

The bulk (sets, chains, rules, member deltas) is libnftables JSON, one
transaction per change. The lease elements are nfnetlink messages built here
(see "lease messages" below for why): arming sets `timeout T expires T`, which
is what refreshes an existing element (a plain re-add does not).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from agent.core.reload import BlockLike

TABLE = "dpagent"
FAMILIES = ("inet", "arp")
# Block names become parts of nft identifiers; the rest of the name is ours.
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# raw: before conntrack (-200), so a closed gate makes no conntrack entries.
PRIORITY_RAW = -300
# Each table's lease set: its key type, and the packet's meta key it is looked up by. While
# the block is open it holds ipv4 and ipv6 (inet) or arp (arp): LEASE_KEY_BYTES below.
LEASE_KEYS = {"inet": ("nf_proto", "nfproto"), "arp": ("ether_type", "protocol")}
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
    """How many members are added or removed to turn `old` into `new`."""
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


# An NS or NA with one link-layer address option: ICMPv6 header and target (24 bytes), then
# the option's type and length (2), then the MAC (6). The reserved word: bytes 6-7.
ND_WITH_OPTION = 32
ND_OPTION_MAC_BITS = (208, 48)
ND_RESERVED_BITS = (48, 16)
NO_MAC = "00:00:00:00:00:00"


def _mac_words(mac: str) -> list[int]:
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"{mac!r} is not a MAC address")
    return [raw[i] << 8 | raw[i + 1] for i in (0, 2, 4)]


def _fold(value: int) -> int:
    while value > 0xFFFF:
        value = (value & 0xFFFF) + (value >> 16)
    return value


def ndp_fix(own: str, shared: str) -> int:
    """The reserved word that keeps an NS / NA's checksum right when its link-layer
    option's MAC changes from `own` (the interface's, which the kernel writes) to
    `shared`: the ones' complement sum of the message stays what it was."""
    return _fold(_fold(sum(_mac_words(own))) + (0xFFFF - _fold(sum(_mac_words(shared)))))


def _rewrites(family: str, block: BlockLike, own_mac: str) -> list[tuple[str, list[dict]]]:
    """(chain, expressions) of the block's MAC rewrites in one table, after its drops."""
    l2 = getattr(block, "l2", None)
    mac = getattr(l2, "mac", None)
    if mac is None:
        return []
    name = block.name
    if family == "arp":
        # A vmac's requests stay as they are: their answers, sent to the vmac, would reach
        # the macvlan and never resolve the parent's entry. The vmac step has the parent
        # send its requests from its own address instead (arp_announce 2).
        only = [_match(_payload("arp", "operation"), "reply")] if l2.mode == "vmac" else []
        return [(f"output.{name}", [_match(_payload("arp", "saddr ip"), f"@{set_name(kind, name)}"), *only,
                                    {"mangle": {"key": _payload("arp", "saddr ether"), "value": mac}}])
                for kind in _sets("arp")]
    if l2.mode != "cluster-mac":
        # vmac: the IPv6 addresses live on the vmac's macvlan, whose NAs carry the vmac.
        return []
    nd = _match(_payload("icmpv6", "type"), {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]})
    option, reserved = ND_OPTION_MAC_BITS, ND_RESERVED_BITS
    return [(f"output.{name}", [
        _match(_payload("ip6", "saddr"), f"@{set_name(kind, name)}"),
        _match(_payload("ip6", "length"), ND_WITH_OPTION), nd,
        {"mangle": {"key": {"payload": {"base": "th", "offset": option[0], "len": option[1]}},
                    "value": int(mac.replace(":", ""), 16)}},
        {"mangle": {"key": {"payload": {"base": "th", "offset": reserved[0], "len": reserved[1]}},
                    "value": ndp_fix(own_mac, mac)}}]) for kind in ("addr6", "net6")]


def _rules(family: str, block: BlockLike, own_mac: str) -> list[dict]:
    """Every rule of the block in one table's chains, drops first; `own_mac` is the
    interface's (only a cluster-mac block's IPv6 rewrite uses it)."""
    name = block.name
    _type, key = LEASE_KEYS[family]
    unleased = _match({"meta": {"key": key}}, f"@{set_name('lease', name)}", "!=")
    local = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
    nd = _match(_payload("icmpv6", "type"), {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]})
    drop = {"drop": None}
    rules = []
    for kind in _sets(family):
        members_of = f"@{set_name(kind, name)}"
        if family == "arp":
            rules.append((f"output.{name}", [_match(_payload("arp", "saddr ip"), members_of), unleased, drop]))
            continue
        ip = "ip" if kind.endswith("4") else "ip6"
        rules.append((f"prerouting.{name}", [_match(_payload(ip, "daddr"), members_of), unleased, local, drop]))
        if ip == "ip6":
            rules.append((f"output.{name}", [_match(_payload(ip, "saddr"), members_of), nd, unleased, drop]))
    rules += _rewrites(family, block, own_mac)
    comment = f"dpagent: block {name} closed unless leased"
    return [{"family": family, "table": TABLE, "chain": chain, "expr": expr, "comment": comment}
            for chain, expr in rules]


def add_block(block: BlockLike, own_mac: str = NO_MAC, plain: bool = True, held: Members | None = None) -> list[dict]:
    """The block's gate, closed: its sets, lease set, chains and rules, then its members
    as element commands, so that a load cut into transactions (`transactions`) has the
    whole gate from the first one on. `own_mac`: the interface's MAC (see `_rules`);
    without `plain`, the loose addresses are left to `member_chunks`; `held`: the
    block's `members`, when the caller has them already (65,536 cost ~17 ms)."""
    held = members(block) if held is None else held
    commands, elements = [], []
    for family in FAMILIES:
        commands.append({"add": _table(family)})
        commands += [{"add": {"set": _set(family, kind, block.name)}} for kind in (*_sets(family), "lease")]
        commands += [{"add": {"chain": chain}} for chain in _chains(family, block.name)]
        commands += [{"add": {"rule": rule}} for rule in _rules(family, block, own_mac)]
    for kind in KINDS if plain else tuple(k for k in KINDS if k not in PLAIN_SETS):
        values = _elements(kind, getattr(held, kind))
        if values:
            # One list, shared by both tables' commands.
            elements += [{"add": {"element": _element_ref(family, kind, block.name, values)}}
                         for family in FAMILIES if kind in _sets(family)]
    return commands + elements


def _element_ref(family: str, kind: str, block: str, values: list) -> dict:
    return {"family": family, "table": TABLE, "name": set_name(kind, block), "elem": values}


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


def rebuild(block: BlockLike, own_mac: str = NO_MAC, plain: bool = True, held: Members | None = None) -> list[dict]:
    """The block's gate as `block` defines it, closed, replacing whatever was there."""
    return remove_block(block.name) + add_block(block, own_mac, plain, held)


def rule_counts(block: BlockLike) -> dict[tuple[str, str], int]:
    """(family, chain) -> how many rules the block's intact gate has there."""
    counts: dict[tuple[str, str], int] = {}
    for family in FAMILIES:
        for chain in _chains(family, check_name(block.name)):
            counts[(family, chain["name"])] = 0
        for rule in _rules(family, block, NO_MAC):
            counts[(family, rule["chain"])] += 1
    return counts


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
    return [{verb: {"element": _element_ref(family, kind, name, elem)}}
            for verb, changes in (("delete", deletes), ("add", adds)) for family in FAMILIES
            for kind, elem in changes if kind in _sets(family)]


# The kernel holds the nftables mutex while it applies a transaction, and a lease message
# waits for it: 131,072 element deletes and as many adds held it ~200 ms here, longer
# than a lease. 8,192 element changes hold it for a few milliseconds.
ELEMENTS_PER_TRANSACTION = 8192


def transactions(commands: list[dict], limit: int | None) -> list[list[dict]]:
    """The commands in order, cut so that no transaction changes more than `limit`
    elements (None: one transaction); an element command is split where it must be."""
    if limit is None:
        return [commands] if commands else []
    out: list[list[dict]] = [[]]
    budget = limit
    for command in commands:
        ((verb, body),) = command.items()
        element = body.get("element")
        if element is None:
            out[-1].append(command)
            continue
        values = element["elem"]
        while values:
            if budget == 0:
                out.append([])
                budget = limit
            part, values = values[:budget], values[budget:]
            budget -= len(part)
            out[-1].append({verb: {"element": {**element, "elem": part}}})
    return [t for t in out if t]


def inverse(transaction: list[dict]) -> list[dict]:
    """Undo a transaction of element changes (what `member_changes` makes), last first."""
    swap = {"add": "delete", "delete": "add"}
    return [{swap[verb]: body} for command in reversed(transaction) for verb, body in command.items()]


def _order(value: IPv4Address | IPv6Address | IPv4Network | IPv6Network) -> tuple[int, int]:
    return (int(value.network_address), value.prefixlen) if hasattr(value, "prefixlen") else (int(value), 0)


# --- lease messages (nfnetlink) --------------------------------------------------------------
#
# The leases bypass libnftables: for every `add element`, libnftables 1.0.6 fetches the
# elements of every interval set in the ruleset, the operator's too (one 65,536-range
# blocklist elsewhere made a refresh cost 0.4-0.7 s here). These messages cost the same
# whatever else the ruleset holds, and they carry milliseconds, where JSON carries whole
# seconds and silently drops a fractional timeout (an element that never expires).

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_GETRULE, NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM, NFT_MSG_DELSETELEM = 7, 12, 13, 14
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP, NLM_F_CREATE = 0x1, 0x4, 0x300, 0x400
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
NFTA_RULE_TABLE, NFTA_RULE_CHAIN = 1, 2
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_TIMEOUT, NFTA_SET_ELEM_EXPIRATION = 1, 4, 5
NFTA_DATA_VALUE = 1
NFPROTO = {"inet": 1, "arp": 3}
# The lease elements' keys as the kernel stores them (nf_proto: 1 byte; ether_type: 2, big-endian).
LEASE_KEY_BYTES = {"inet": (b"\x02", b"\x0a"), "arp": (b"\x08\x06",)}

_NLMSGHDR = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")
_ERROR = struct.Struct("=i")


def lease_ms(seconds: float) -> int:
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"lease of {seconds!r} s: it must be a positive number of seconds")
    return max(1, round(seconds * 1000))


def nla(kind: int, payload: bytes) -> bytes:
    return _ATTR.pack(_ATTR.size + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def nla_nest(kind: int, *attrs: bytes) -> bytes:
    return nla(kind | NLA_F_NESTED, b"".join(attrs))


def nla_string(kind: int, text: str) -> bytes:
    return nla(kind, text.encode() + b"\0")


def nfnl_message(kind: int, flags: int, seq: int, family: int, attrs: bytes, res_id: int = 0) -> bytes:
    body = struct.pack("=BB", family, 0) + struct.pack("!H", res_id) + attrs
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body


def _lease_list(family: str, name: str, ms: int | None) -> bytes:
    """The lease set's list attributes: every key of the family's lease, timed when `ms`."""
    timed = b"" if ms is None else (nla(NFTA_SET_ELEM_TIMEOUT, struct.pack("!Q", ms))
                                    + nla(NFTA_SET_ELEM_EXPIRATION, struct.pack("!Q", ms)))
    items = b"".join(nla_nest(NFTA_LIST_ELEM, nla_nest(NFTA_SET_ELEM_KEY, nla(NFTA_DATA_VALUE, key)), timed)
                     for key in LEASE_KEY_BYTES[family])
    return (nla_string(NFTA_SET_ELEM_LIST_TABLE, TABLE) + nla_string(NFTA_SET_ELEM_LIST_SET, set_name("lease", name))
            + nla_nest(NFTA_SET_ELEM_LIST_ELEMENTS, items))


def lease_batch(names: Sequence[str], lease: float, seq: int, *, close: bool = False) -> tuple[bytes, dict[int, str]]:
    """One transaction that arms (one lease from now; on an existing element, `timeout`
    with `expires` is what refreshes it) or, with `close`, arms and then deletes the lease
    elements of these blocks; arming first makes the delete find its element also when
    the lease had run out. Sequence numbers start at `seq`. Returns the batch and, for
    each message that must be acked, its sequence number and what it does."""
    ms = lease_ms(lease)
    parts = [nfnl_message(NFNL_MSG_BATCH_BEGIN, 0, seq, 0, b"", NFNL_SUBSYS_NFTABLES)]
    acked: dict[int, str] = {}
    steps = [("add", NFT_MSG_NEWSETELEM, NLM_F_CREATE, ms)] + ([("delete", NFT_MSG_DELSETELEM, 0, None)] if close else [])
    for name in names:
        check_name(name)
        for family in FAMILIES:
            for verb, kind, flags, timed in steps:
                seq += 1
                acked[seq] = f"{verb} element {family} {TABLE} {set_name('lease', name)}"
                parts.append(nfnl_message(NFNL_SUBSYS_NFTABLES << 8 | kind, flags | NLM_F_ACK, seq, NFPROTO[family],
                                      _lease_list(family, name, timed)))
    parts.append(nfnl_message(NFNL_MSG_BATCH_END, 0, seq + 1, 0, b"", NFNL_SUBSYS_NFTABLES))
    return b"".join(parts), acked


# Plain-set members go to the kernel as nfnetlink element messages too: libnftables spent
# ~400 ms parsing and evaluating 65,536 of them as JSON (two tables). A netlink attribute
# holds at most 64 KiB: one batch of one message per 60 KiB of elements.
MEMBER_BATCH_BYTES = 60 << 10
PLAIN_SETS = ("addr4", "addr6")


@dataclass(frozen=True)
class MemberChunk:
    """Loose addresses for one plain set of one table, already encoded as list elements."""

    family: str
    set: str
    count: int
    items: bytes


def member_chunks(name: str, held: Members) -> list[MemberChunk]:
    """The block's loose addresses for its plain sets, in both tables, cut to fit one
    message each."""
    check_name(name)
    out = []
    for kind in PLAIN_SETS:
        keys = [a.packed for a in getattr(held, kind)]
        if not keys:
            continue
        # Every element is the same three attribute headers and its key.
        head = nla_nest(NFTA_LIST_ELEM, nla_nest(NFTA_SET_ELEM_KEY, nla(NFTA_DATA_VALUE, keys[0])))[:-len(keys[0])]
        chunk = MEMBER_BATCH_BYTES // (len(head) + len(keys[0]))
        for first in range(0, len(keys), chunk):
            part = keys[first:first + chunk]
            items = head + head.join(part)
            out += [MemberChunk(family, set_name(kind, name), len(part), items)
                    for family in FAMILIES if kind in _sets(family)]
    return out


def member_batch(chunk: MemberChunk, seq: int) -> tuple[bytes, dict[int, str]]:
    """One transaction adding one chunk's addresses."""
    target = nla_string(NFTA_SET_ELEM_LIST_TABLE, TABLE) + nla_string(NFTA_SET_ELEM_LIST_SET, chunk.set)
    begin = nfnl_message(NFNL_MSG_BATCH_BEGIN, 0, seq, 0, b"", NFNL_SUBSYS_NFTABLES)
    add = nfnl_message(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_ACK, seq + 1,
                       NFPROTO[chunk.family], target + nla_nest(NFTA_SET_ELEM_LIST_ELEMENTS, chunk.items))
    end = nfnl_message(NFNL_MSG_BATCH_END, 0, seq + 2, 0, b"", NFNL_SUBSYS_NFTABLES)
    return begin + add + end, {seq + 1: f"add element {chunk.family} {TABLE} {chunk.set} ({chunk.count} addresses)"}


def lease_dump(family: str, name: str, seq: int) -> bytes:
    attrs = nla_string(NFTA_SET_ELEM_LIST_TABLE, TABLE) + nla_string(NFTA_SET_ELEM_LIST_SET, set_name("lease", name))
    return nfnl_message(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETSETELEM, NLM_F_DUMP, seq, NFPROTO[family], attrs)


def rule_dump(family: str, seq: int) -> bytes:
    """Our table's rules only: the kernel filters the dump, nothing of other tables is read."""
    return nfnl_message(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETRULE, NLM_F_DUMP, seq, NFPROTO[family],
                    nla_string(NFTA_RULE_TABLE, TABLE))


@dataclass(frozen=True)
class Reply:
    kind: int
    seq: int
    error: int | None  # for NLMSG_ERROR: 0 is an ack, else a negative errno
    attrs: bytes  # after the nfgenmsg header


def replies(data: bytes) -> list[Reply]:
    """The netlink messages in one datagram (truncated ones dropped)."""
    out, offset = [], 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break
        body = data[offset + _NLMSGHDR.size: offset + length]
        if kind == NLMSG_ERROR:
            (error,) = _ERROR.unpack_from(body)
            # An error carries the request's header, whose sequence number it answers.
            out.append(Reply(kind, _NLMSGHDR.unpack_from(body, 4)[3], error, b""))
        else:
            out.append(Reply(kind, seq, None, body[4:]))
        offset += (length + 3) & ~3
    return out


def nla_parse(data: bytes) -> list[tuple[int, bytes]]:
    out, offset = [], 0
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            break
        out.append((kind & NLA_TYPE_MASK, data[offset + _ATTR.size: offset + length]))
        offset += (length + 3) & ~3
    return out


def rule_chain(attrs: bytes) -> str | None:
    """The chain a dumped rule belongs to."""
    for kind, value in nla_parse(attrs):
        if kind == NFTA_RULE_CHAIN:
            return value.rstrip(b"\0").decode(errors="replace")
    return None


def lease_expirations(attrs: bytes) -> dict[bytes, float]:
    """Key -> seconds until it expires, of the elements in one dumped set-element message."""
    found: dict[bytes, float] = {}
    for kind, value in nla_parse(attrs):
        if kind != NFTA_SET_ELEM_LIST_ELEMENTS:
            continue
        for _elem, element in nla_parse(value):
            fields = dict(nla_parse(element))
            key = dict(nla_parse(fields.get(NFTA_SET_ELEM_KEY, b""))).get(NFTA_DATA_VALUE)
            expires = fields.get(NFTA_SET_ELEM_EXPIRATION)
            if key is not None and expires is not None and len(expires) == 8:
                found[key] = struct.unpack("!Q", expires)[0] / 1000
    return found


def lease_left(family: str, expirations: dict[bytes, float]) -> float | None:
    """Seconds until the family's lease runs out; None unless every key of it is there."""
    keys = LEASE_KEY_BYTES[family]
    return min(expirations[k] for k in keys) if all(k in expirations for k in keys) else None
