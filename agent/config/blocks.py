"""Address blocks: prefixes, inline addresses and classic address files, folded and checked.

Each block is first a draft that remembers where every prefix and address came
from (key path, FILE:LINE), so that an overlap between two blocks names both
places; only then is it folded into a `Block` of disjoint sorted prefixes and
the loose addresses outside them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from agent.config.files import classic_lines, read_text
from agent.config.keys import looks_secret
from agent.config.messages import ConfigError, reason
from agent.config.model import AnnounceConfig, Block, L2Config
from agent.config.parse import Table, parse_address, parse_prefix
from agent.config.schema import (
    MAX_LOOSE_ADDRESSES, MAX_V6_ADDRESSES, MAX_V6_BLOCK_ADDRESSES, MAX_XDP_BLOCKS, TABLES_BY_PATH, VMAC_PREFIX,
)
from agent.core.packing import IPAddress, IPNetwork
from agent.core.views import view_size
from agent.core.wire import FRAME_SIZE, MAX_FRAME_SIZE

# Nodes sharing an active/active block at most (what a frame's views are sized for).
MAX_SHARING_NODES = 8


@dataclass
class _Draft:
    """A block being built: prefixes and loose addresses with where each came from."""

    index: int
    name: str
    interface: str | None
    prefixes: dict[IPNetwork, str]
    loose: dict[IPAddress, tuple[str, str]]  # address -> (key path, FILE:LINE or "")
    announce: AnnounceConfig | None
    l2: L2Config | None = None
    where: str = ""
    mode: str = "active-passive"
    weight: float = 1.0


def build_blocks(tables: list[dict] | None, base: Path, errors: list[ConfigError]) -> tuple[Block, ...] | None:
    """Every block, or None after recording why; overlaps between blocks are errors."""
    if tables is None:
        return None
    if not tables:
        errors.append(ConfigError("block", None, "at least one [[block]] is required"))
        return None
    before = len(errors)
    budget = _Budget()
    drafts = [_draft(i, table, base, errors, budget) for i, table in enumerate(tables)]
    _check_unique_names(drafts, errors)
    _check_overlaps(drafts, errors)
    _check_v6_counts(drafts, errors)
    _check_l2(drafts, errors)
    _check_views_fit(drafts, errors)
    if len(errors) != before:
        return None
    return tuple(_finish(d) for d in drafts)


def _draft(index: int, table: dict, base: Path, errors: list[ConfigError], budget: _Budget) -> _Draft:
    t = Table(table, f"block[{index}]", errors, TABLES_BY_PATH["block"])
    name = t.value("name")
    interface = t.value("interface")
    before = len(errors)
    draft = _Draft(index, name or "", interface, {}, {}, _announce(t), _l2(t), t.where,  # type: ignore[arg-type]
                   t.value("mode") or "active-passive", t.value("weight") or 1.0)
    if draft.mode == "active-active" and (draft.l2 or L2Config()).mode != "cluster-mac":
        errors.append(ConfigError(t.key("mode"), draft.mode,
                                  "needs [block.l2] mode cluster-mac: every node must receive the block's frames"))
    for key, text in t.strings("prefixes"):
        net = parse_prefix(text)
        if isinstance(net, str):
            errors.append(ConfigError(key, text, net))
        else:
            draft.prefixes.setdefault(net, key)
    for key, text in t.strings("addresses"):
        _add_loose(draft, key, text, errors, budget)
    for key, text in t.strings("address_files"):
        _add_file(draft, key, text, base / text, errors, budget)
    _fold_own_prefixes(draft)
    if len(errors) == before and not draft.prefixes and not draft.loose:
        errors.append(ConfigError(t.where, None, "has no addresses: give prefixes, addresses or address_files"))
    return draft


def _announce(block: Table) -> AnnounceConfig | None:
    table = block.value("announce")
    if table is None:
        return None
    t = Table(table, block.key("announce"), block.errors, TABLES_BY_PATH["block.announce"])  # type: ignore[arg-type]
    values = {name: t.value(name) for name in t.keys}
    return None if None in values.values() else AnnounceConfig(**values)  # type: ignore[arg-type]


def _l2(block: Table) -> L2Config | None:
    table = block.value("l2")
    if table is None:
        return None
    t = Table(table, block.key("l2"), block.errors, TABLES_BY_PATH["block.l2"])  # type: ignore[arg-type]
    before = len(t.errors)
    values = {name: t.value(name) for name in t.keys}
    if values["mode"] == "vmac" and values["vrid"] is None and "vrid" not in t.table:
        t.error("vrid", None, "is required with mode vmac")
    if values["backend"] == "xdp" and values["mode"] != "cluster-mac":
        t.error("backend", values["backend"], "is a cluster-mac filter: it needs mode cluster-mac")
    if values["cluster_mac"] is not None:
        mac = _mac(values["cluster_mac"])  # type: ignore[arg-type]
        if mac is None:
            t.error("cluster_mac", values["cluster_mac"], "must be a MAC address like 01:00:5e:00:01:01")
        elif not int(mac[:2], 16) & 1:
            t.error("cluster_mac", values["cluster_mac"],
                    "must be a multicast MAC (lowest bit of the first octet set), so that every node receives it")
        values["cluster_mac"] = mac
    return None if len(t.errors) != before else L2Config(**values)  # type: ignore[arg-type]


def _mac(text: str) -> str | None:
    """The MAC in lower case with colons, or None if `text` is not six hex octets."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        return None
    return ":".join(parts).lower()


def _check_l2(drafts: list[_Draft], errors: list[ConfigError]) -> None:
    """A vmac block speaks one IP version (its MAC says which); vmacs and cluster MACs are
    not shared between blocks of one node, or two blocks would move as one."""
    seen: dict[tuple, str] = {}
    xdp_blocks = 0
    for draft in drafts:
        l2 = draft.l2 or L2Config()
        if l2.mode == "garp":
            continue
        xdp_blocks += l2.backend == "xdp"
        if xdp_blocks > MAX_XDP_BLOCKS and l2.backend == "xdp":
            errors.append(ConfigError(f"{draft.where}.l2.backend", l2.backend,
                                      f"one XDP filter serves at most {MAX_XDP_BLOCKS} blocks"))
        versions = {a.version for a in draft.loose} | {n.version for n in draft.prefixes}
        if l2.mode == "vmac":
            if len(versions) > 1:
                errors.append(ConfigError(f"{draft.where}.l2.mode", l2.mode,
                                          "a vmac block holds addresses of one IP version: its MAC "
                                          "(00:00:5e:00:01:VRID or 00:00:5e:00:02:VRID) says which; "
                                          "split it into an IPv4 and an IPv6 block"))
                continue
            identity: tuple = ("vrid", l2.vrid, *versions)
            key, value = "vrid", l2.vrid
        else:
            identity = ("cluster_mac", draft.interface, l2.cluster_mac)
            key, value = "cluster_mac", l2.cluster_mac
        if identity in seen:
            errors.append(ConfigError(f"{draft.where}.l2.{key}", value, f"already used by block {seen[identity]}"))
        else:
            seen[identity] = draft.name


def _check_views_fit(drafts: list[_Draft], errors: list[ConfigError]) -> None:
    """Every frame carries the views of all active/active blocks, and a frame must not be
    fragmented: with MAX_SHARING_NODES nodes, their buckets must fit in it."""
    room = MAX_FRAME_SIZE - FRAME_SIZE - 1
    for draft in drafts:
        if draft.mode != "active-active":
            continue
        buckets = (draft.l2 or L2Config()).buckets
        room -= view_size(buckets, MAX_SHARING_NODES - 1)
        if room < 0:
            errors.append(ConfigError(f"{draft.where}.l2.buckets", buckets,
                                      f"the active/active blocks' bucket views no longer fit in one "
                                      f"{MAX_FRAME_SIZE}-byte heartbeat frame: give them fewer buckets"))
            return


class _Budget:
    """The single addresses all blocks together may still take (MAX_LOOSE_ADDRESSES)."""

    def __init__(self) -> None:
        self.left = MAX_LOOSE_ADDRESSES
        self.spent = False  # the cap was hit and reported: take nothing more, read no more files

    def take(self, draft: _Draft, address: IPAddress, origin: tuple[str, str]) -> bool:
        """Add `address` to the draft's loose ones (a repeat costs nothing); False past the cap."""
        size = len(draft.loose)
        draft.loose.setdefault(address, origin)
        if len(draft.loose) == size:
            return True
        if self.left == 0:
            del draft.loose[address]
            self.spent = True
            return False
        self.left -= 1
        return True

    def message(self, here: str) -> str:
        return (f"{here}more than {MAX_LOOSE_ADDRESSES:,} single addresses in all blocks together: "
                "give large ranges as prefixes")


def _add_loose(draft: _Draft, key: str, text: str, errors: list[ConfigError], budget: _Budget) -> None:
    if budget.spent:
        return
    parsed = parse_address(text, multicast=False)
    if isinstance(parsed, str):
        errors.append(ConfigError(key, text, parsed))
    elif not budget.take(draft, parsed, (key, "")):
        errors.append(ConfigError(key, text, budget.message("")))


def _add_file(draft: _Draft, key: str, text: str, path: Path, errors: list[ConfigError], budget: _Budget) -> None:
    """Load a classic `<dev>.addr.external` file; each bad line is its own error."""
    if budget.spent:
        return
    try:
        mode, content = read_text(path)
    except (OSError, ValueError) as e:
        errors.append(ConfigError(key, text, f"cannot read: {reason(e)}"))
        return
    bad = []
    for number, line in classic_lines(content):
        parsed = parse_address(line, multicast=False)
        if isinstance(parsed, str):
            bad.append((number, line, parsed))
        elif not budget.take(draft, parsed, (key, f"{path}:{number}")):
            errors.append(ConfigError(key, text, budget.message(f"{path}:{number}: ")))
            break
    # A file others may not read, or one with a secret in it (the key file named
    # by mistake, say), must not leak through the errors: show where, never what.
    private = not mode & 0o004 or any(looks_secret(line) for _, line, _ in bad)
    for number, line, problem in bad:
        shown = "" if private else f" {_cut(line)}:"
        errors.append(ConfigError(key, text, f"{path}:{number}:{shown} {problem}"))


def _cut(line: str) -> str:
    """A bad line as Python shows it, cut short: one line of a huge file must not flood the log."""
    return repr(line) if len(line) <= 80 else repr(line[:77]) + "..."


def _fold_own_prefixes(draft: _Draft) -> None:
    """Drop prefixes nested in another of the same block, then loose addresses inside them."""
    nets = sorted(draft.prefixes, key=lambda n: (n.version, n.prefixlen))
    kept: dict[IPNetwork, str] = {}
    for net in nets:
        if not any(net.version == k.version and net.subnet_of(k) for k in kept):  # type: ignore[arg-type]
            kept[net] = draft.prefixes[net]
    draft.prefixes = kept
    index = _PrefixIndex(kept)
    draft.loose = {a: o for a, o in draft.loose.items() if index.find(a) is None}


def _check_unique_names(drafts: list[_Draft], errors: list[ConfigError]) -> None:
    first: dict[str, int] = {}
    for d in drafts:
        if not d.name:
            continue
        if d.name in first:
            errors.append(ConfigError(f"block[{d.index}].name", d.name, f"already used by block[{first[d.name]}]"))
        else:
            first[d.name] = d.index


def _check_overlaps(drafts: list[_Draft], errors: list[ConfigError]) -> None:
    """Report every prefix or address that two blocks would both claim, naming both."""
    for j, later in enumerate(drafts):
        for net, key in later.prefixes.items():
            for earlier in drafts[:j]:
                for other, other_key in earlier.prefixes.items():
                    if net.version == other.version and net.overlaps(other):  # type: ignore[arg-type]
                        errors.append(ConfigError(key, str(net), f"overlaps {other} of {_label(earlier)} ({other_key})"))
    owner: dict[IPAddress, _Draft] = {}
    for d in drafts:
        for address in d.loose:
            owner.setdefault(address, d)
    index = _PrefixIndex({net: d for d in drafts for net in d.prefixes})
    for d in drafts:
        for address, (key, place) in d.loose.items():
            here = f"{place}: " if place else ""
            holder = index.find(address)
            if holder is not None:
                net, other = holder
                errors.append(ConfigError(
                    key, str(address), f"{here}inside {net} of {_label(other)} ({other.prefixes[net]})"))
            first = owner[address]
            if first is not d:
                there = ", ".join(filter(None, first.loose[address]))
                errors.append(ConfigError(key, str(address), f"{here}also in {_label(first)} ({there})"))


def _check_v6_counts(drafts: list[_Draft], errors: list[ConfigError]) -> None:
    """Each IPv6 address is one interface address, added one at a time: cap them."""
    why = "(each is one interface address, added one at a time)"
    total = 0
    for d in drafts:
        count = sum(n.num_addresses for n in d.prefixes if n.version == 6) + sum(a.version == 6 for a in d.loose)
        if count > MAX_V6_BLOCK_ADDRESSES:
            message = f"has {count:,} IPv6 addresses, at most {MAX_V6_BLOCK_ADDRESSES:,} per block {why}"
            errors.append(ConfigError(f"block[{d.index}]", None, message))
        total += count
    if total > MAX_V6_ADDRESSES:
        message = f"{total:,} IPv6 addresses in all blocks, at most {MAX_V6_ADDRESSES:,} {why}"
        errors.append(ConfigError("block", None, message))


def _label(draft: _Draft) -> str:
    return f'block "{draft.name}"' if draft.name else f"block[{draft.index}]"


class _PrefixIndex:
    """Which prefix holds an address, in one dict lookup per distinct prefix length."""

    def __init__(self, prefixes: dict) -> None:
        self.by_length: dict[tuple[int, int], dict[int, tuple]] = {}
        for net, payload in prefixes.items():
            bucket = self.by_length.setdefault((net.version, net.prefixlen), {})
            bucket[int(net.network_address)] = (net, payload)

    def find(self, address: IPAddress) -> tuple | None:
        """(prefix, its payload) of the prefix that holds `address`, or None."""
        bits = address.max_prefixlen
        for (version, length), bucket in self.by_length.items():
            if version == address.version:
                mask = ((1 << bits) - 1) ^ ((1 << (bits - length)) - 1)
                hit = bucket.get(int(address) & mask)
                if hit is not None:
                    return hit
        return None


def _finish(draft: _Draft) -> Block:
    prefixes = tuple(sorted(draft.prefixes, key=_sort_key))
    addresses = tuple(sorted(draft.loose, key=_sort_key))
    l2 = draft.l2 or L2Config()
    if l2.mode == "vmac":
        version = (prefixes or addresses)[0].version
        l2 = replace(l2, vmac=f"{VMAC_PREFIX[version]}:{l2.vrid:02x}", device=f"dpv{version}-{l2.vrid}")
    return Block(draft.name, draft.interface, prefixes, addresses, draft.announce, l2,  # type: ignore[arg-type]
                 draft.mode, draft.weight)


def _sort_key(item: IPAddress | IPNetwork) -> tuple[int, int]:
    if isinstance(item, (IPv4Network, IPv6Network)):
        return item.version, int(item.network_address)
    return item.version, int(item)
