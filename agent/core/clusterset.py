"""The cluster-MAC filter, the CLUSTERIP replacement: table netdev dpagent, and its bucket flips.

Every node of a cluster-mac block receives every frame sent to the block's
multicast MAC. Per block, a netdev ingress chain on the block's interface hashes
each IP packet to that MAC into one of B buckets (`jhash <fields> mod B seed S`,
what agent.core.buckets computes bit for bit) and looks the bucket up in the
block's verdict map: an owned bucket jumps to a chain that makes the packet
PACKET_HOST (the stack, TCP above all, drops multicast-addressed unicast IP)
and accepts it; any other packet to the MAC is dropped. ARP to the MAC (a
neighbour's unicast probe of its entry) is accepted: only the holder's gate
lets a reply out.

The buckets carry no timeout of their own: behind this filter the block's gate
(agent.core.ruleset) drops every packet to a block address unless its lease
holds, so a dead agent's node stops accepting its buckets within the lease
just the same, and a refresh stays one small message. Ownership changes are
element updates in one nfnetlink transaction, all buckets at once in
active/passive.

The hash covers the outside peer's side of a packet arriving for a block
address, its source (address, then ports): replies leave by routing, through
no filter of ours. Ports count only for TCP and UDP that are no fragments
(buckets.flow_fields()), so a block hashed with ports has three rules a family,
one per kind of packet: a bucket the map lacks goes on to the next rule, and
must not meet a second hash of the packet there that the map has.

The map's key is typed from `numgen` because nftables 1.0.6 has no JSON for
`typeof`: the table is loaded as nft text, in-process through libnftables like
the rest.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from agent.core import ruleset
from agent.core.buckets import PORT_PROTOCOLS, HashFields

TABLE = ruleset.TABLE
# Before anything of the operator's at ingress.
PRIORITY = -500
NFPROTO_NETDEV = 5
NFTA_SET_ELEM_DATA = 2
NFTA_DATA_VERDICT = 2
NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN = 1, 2
NFT_GOTO = -4

_FIELDS = {
    HashFields.SOURCE: "{ip} saddr",
    HashFields.SOURCE_PORT: "{ip} saddr . th sport",
    HashFields.SOURCE_PORTS: "{ip} saddr . th sport . th dport",
}

# flow_fields()'s protocols by their nft names: a KeyError at import if one is added unnamed.
_NFT_PROTOCOLS = {6: "tcp", 17: "udp"}
_PORT_PROTOCOLS = "{ " + ", ".join(_NFT_PROTOCOLS[p] for p in sorted(PORT_PROTOCOLS)) + " }"
# What makes a packet a fragment for flow_fields(), per family: (no fragment, fragment).
_FRAGMENT = {
    "ip": ("ip frag-off & 0x3fff == 0", "ip frag-off & 0x3fff != 0"),
    "ip6": ("exthdr frag missing", "exthdr frag exists"),
}


def hash_expression(fields: HashFields, ip: str, buckets: int, seed: int) -> str:
    """The nft expression whose value is the bucket of a packet; `ip` is "ip" or "ip6"."""
    return f"jhash {_FIELDS[fields].format(ip=ip)} mod {buckets} seed {seed:#x}"


def _names(block: str) -> tuple[str, str, str]:
    ruleset.check_name(block)
    return f"buckets.{block}", f"owned.{block}", f"ingress.{block}"


def add_block(block: str, interface: str, mac: str, fields: HashFields, buckets: int, seed: int) -> str:
    """The block's filter with no bucket owned, replacing whatever was there, as one
    nft text transaction. Every value is checked here: nft text is a language."""
    buckets_map, owned, ingress = _names(block)
    if not interface.isprintable() or '"' in interface or not 0 < len(interface) < 16:
        raise ValueError(f"interface {interface!r} is not an interface name")
    mac = ":".join(f"{b:02x}" for b in bytes.fromhex(mac.replace(":", "")))
    if len(mac) != 17:
        raise ValueError(f"{mac!r} is not a MAC address")
    if not 1 <= buckets <= 0xFFFFFFFF or not 0 <= seed <= 0xFFFFFFFF:
        raise ValueError(f"buckets {buckets} and seed {seed} must be 32-bit values, buckets at least 1")
    if not isinstance(fields, HashFields):
        raise ValueError(f"fields must be a HashFields, not {fields!r}")
    rules = []
    for ip in ("ip", "ip6"):
        match = f"ether daddr {mac} meta protocol {ip}"
        by_source = hash_expression(HashFields.SOURCE, ip, buckets, seed)
        if fields is HashFields.SOURCE:
            rules.append(f"{match} {by_source} vmap @{buckets_map}")
            continue
        whole, fragment = _FRAGMENT[ip]
        # Disjoint but for a fragment of another protocol, which both of the last two hash alike.
        rules += [f"{match} {whole} meta l4proto {_PORT_PROTOCOLS} {hash_expression(fields, ip, buckets, seed)} "
                  f"vmap @{buckets_map}",
                  f"{match} {fragment} {by_source} vmap @{buckets_map}",
                  f"{match} meta l4proto != {_PORT_PROTOCOLS} {by_source} vmap @{buckets_map}"]
    rules += [f"ether daddr {mac} meta protocol arp accept", f"ether daddr {mac} drop"]
    return "\n".join([
        remove_block(block),
        f"add table netdev {TABLE}",
        f"add map netdev {TABLE} {buckets_map} {{ typeof numgen inc mod {buckets} : verdict; }}",
        f"add chain netdev {TABLE} {owned}",
        f"add rule netdev {TABLE} {owned} meta pkttype set host accept",
        f'add chain netdev {TABLE} {ingress} {{ type filter hook ingress device "{interface}" '
        f"priority {PRIORITY}; policy accept; }}",
        *(f"add rule netdev {TABLE} {ingress} {rule}" for rule in rules),
    ]) + "\n"


def remove_block(block: str) -> str:
    """Every object of the block's filter gone, whether or not it existed (`add` first:
    nftables 1.0.6 has no `destroy`). The ingress chain's hook is not repeated: adding an
    existing chain by name alone is a no-op, and a missing one is made a regular chain."""
    buckets_map, owned, ingress = _names(block)
    return "\n".join([
        f"add table netdev {TABLE}",
        f"add chain netdev {TABLE} {ingress}", f"flush chain netdev {TABLE} {ingress}",
        f"delete chain netdev {TABLE} {ingress}",
        f"add chain netdev {TABLE} {owned}", f"flush chain netdev {TABLE} {owned}",
        f"add map netdev {TABLE} {buckets_map} {{ typeof numgen inc mod 1 : verdict; }}",
        f"delete map netdev {TABLE} {buckets_map}",
        f"delete chain netdev {TABLE} {owned}",
    ])


DELETE_TABLE = f"add table netdev {TABLE}\ndelete table netdev {TABLE}\n"


def _elements(block: str, owned: Sequence[int]) -> bytes:
    _map, chain, _ingress = _names(block)
    verdict = ruleset.nla_nest(NFTA_SET_ELEM_DATA, ruleset.nla_nest(
        NFTA_DATA_VERDICT, ruleset.nla(NFTA_VERDICT_CODE, struct.pack("!i", NFT_GOTO)),
        ruleset.nla_string(NFTA_VERDICT_CHAIN, chain)))
    # The map's key is a register value: host byte order.
    return b"".join(ruleset.nla_nest(ruleset.NFTA_LIST_ELEM, ruleset.nla_nest(
        ruleset.NFTA_SET_ELEM_KEY, ruleset.nla(ruleset.NFTA_DATA_VALUE, struct.pack("=I", b))), verdict)
        for b in owned)


def ownership_batch(block: str, owned: Sequence[int], seq: int) -> tuple[bytes, dict[int, str]]:
    """One transaction that makes `owned` the block's owned buckets: the map is flushed
    (a delete without elements) and the owned ones added. Returns the batch and the
    sequence numbers to be acked, with what each does."""
    buckets_map, _owned, _ingress = _names(block)
    name = ruleset.nla_string(ruleset.NFTA_SET_ELEM_LIST_TABLE, TABLE) + ruleset.nla_string(
        ruleset.NFTA_SET_ELEM_LIST_SET, buckets_map)
    subsys = ruleset.NFNL_SUBSYS_NFTABLES
    parts = [ruleset.nfnl_message(ruleset.NFNL_MSG_BATCH_BEGIN, 0, seq, 0, b"", subsys)]
    acked = {seq + 1: f"flush map netdev {TABLE} {buckets_map}"}
    parts.append(ruleset.nfnl_message(subsys << 8 | ruleset.NFT_MSG_DELSETELEM, ruleset.NLM_F_ACK, seq + 1,
                                      NFPROTO_NETDEV, name))
    seq += 1
    if owned:
        seq += 1
        acked[seq] = f"add element netdev {TABLE} {buckets_map} ({len(owned)} buckets)"
        parts.append(ruleset.nfnl_message(
            subsys << 8 | ruleset.NFT_MSG_NEWSETELEM, ruleset.NLM_F_CREATE | ruleset.NLM_F_ACK, seq, NFPROTO_NETDEV,
            name + ruleset.nla_nest(ruleset.NFTA_SET_ELEM_LIST_ELEMENTS, _elements(block, owned))))
    parts.append(ruleset.nfnl_message(ruleset.NFNL_MSG_BATCH_END, 0, seq + 1, 0, b"", subsys))
    return b"".join(parts), acked


def owned_dump(block: str, seq: int) -> bytes:
    buckets_map, _owned, _ingress = _names(block)
    attrs = ruleset.nla_string(ruleset.NFTA_SET_ELEM_LIST_TABLE, TABLE) + ruleset.nla_string(
        ruleset.NFTA_SET_ELEM_LIST_SET, buckets_map)
    return ruleset.nfnl_message(ruleset.NFNL_SUBSYS_NFTABLES << 8 | ruleset.NFT_MSG_GETSETELEM, ruleset.NLM_F_DUMP,
                                seq, NFPROTO_NETDEV, attrs)


def owned_buckets(attrs: bytes) -> list[int]:
    """The buckets (keys) in one dumped set-element message."""
    found = []
    for kind, value in ruleset.nla_parse(attrs):
        if kind != ruleset.NFTA_SET_ELEM_LIST_ELEMENTS:
            continue
        for _elem, element in ruleset.nla_parse(value):
            key = dict(ruleset.nla_parse(dict(ruleset.nla_parse(element)).get(ruleset.NFTA_SET_ELEM_KEY, b"")))
            raw = key.get(ruleset.NFTA_DATA_VALUE)
            if raw is not None and len(raw) == 4:
                found.append(struct.unpack("=I", raw)[0])
    return sorted(found)
