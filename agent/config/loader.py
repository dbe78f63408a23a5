"""Parse and validate the TOML configuration, the key file and the classic address files.

Validation never stops at the first problem: every check appends a `ConfigError`
(key path, offending value, message) and the caller gets them all at once in one
`ConfigInvalid`, so `dpagent check` can list a whole broken file in one run.
The only I/O here is reading the files the configuration names, kept in the
`_read_*` functions at the bottom; everything else works on plain values.
Relative paths in the configuration are relative to the configuration file's
directory, so a config and its key and address files can be moved together.
"""

from __future__ import annotations

import difflib
import errno
import ipaddress
import math
import os
import re
import socket
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from agent.core.packing import pack_addresses

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PATH = Path("/etc/dpagent/dpagent.toml")
DEFAULT_CONTROL_SOCKET = Path("/run/dpagent/control.sock")
DEFAULT_PORT = 7788
MAX_KEYS = 2  # the current key and the next one, during a rotation
MIN_SECRET_BYTES = 16
# IPv6 prefixes are expanded to single addresses for neighbour advertisements.
# The kernel adds IPv6 addresses one at a time at a cost that grows with their
# number (4,096 took 4.2 s here, the next 4,096 8.9 s): bound a takeover's length.
MAX_V6_PREFIX_ADDRESSES = 1 << 12
# An IPv4 prefix becomes one AnyIP route, but every member is announced by GARP.
MAX_V4_PREFIX_ADDRESSES = 1 << 24
MAX_PREEMPT_DELAY = 3600
MAX_PPS = 10_000_000
MAX_ROUND_DELAY = 3600
MAX_REFRESH = 86400
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) minus the terminating NUL
_IFNAMSIZ = 16
_BLOCK_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_REQUIRED = object()


@dataclass(frozen=True)
class ConfigError:
    """One problem found in the configuration; `value` is None when the key is absent."""

    key: str
    value: object
    message: str

    def __str__(self) -> str:
        if not self.key:
            return self.message
        if self.value is None:
            return f"{self.key}: {self.message}"
        return f"{self.key} = {_show(self.value)}: {self.message}"


class ConfigInvalid(Exception):
    """The configuration (or key file) has one or more errors, all of them in `errors`."""

    def __init__(self, errors: tuple[ConfigError, ...] | list[ConfigError]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


@dataclass(frozen=True)
class NodeConfig:
    id: int
    priority: int = 100
    preempt: bool = True
    preempt_delay: float = 0.0
    advert_interval: float = 0.05
    dead_multiplier: int = 3
    realtime_priority: int = 10
    state_dir: Path = Path("/var/lib/dpagent")

    @property
    def dead_interval(self) -> float:
        """Seconds of silence after which the peer is declared dead."""
        return self.advert_interval * self.dead_multiplier


@dataclass(frozen=True)
class HeartbeatLink:
    interface: str
    group: IPAddress | None
    peers: tuple[IPAddress, ...]
    port: int = DEFAULT_PORT


@dataclass(frozen=True)
class AnnounceConfig:
    pps: int = 0
    rounds: int = 2
    round_delay: float = 2.0
    refresh: float = 0.0
    arp_mode: str = "request"


@dataclass(frozen=True)
class Block:
    """An address block: disjoint sorted prefixes plus the loose addresses outside them."""

    name: str
    interface: str
    prefixes: tuple[IPNetwork, ...]
    addresses: tuple[IPAddress, ...]
    announce: AnnounceConfig = AnnounceConfig()

    @property
    def address_count(self) -> int:
        return sum(p.num_addresses for p in self.prefixes) + len(self.addresses)

    def packed_v4(self) -> bytes:
        """Every IPv4 address of the block, ascending, 4 bytes each in network order."""
        return pack_addresses(self.prefixes, self.addresses, 4)

    def packed_v6(self) -> bytes:
        """Every IPv6 address of the block, ascending, 16 bytes each in network order."""
        return pack_addresses(self.prefixes, self.addresses, 6)


@dataclass(frozen=True)
class Config:
    path: Path
    node: NodeConfig
    heartbeat: tuple[HeartbeatLink, ...]
    key_file: Path
    control_socket: Path
    blocks: tuple[Block, ...]
    # (key id, secret) pairs from key_file, the sending key first; never printed.
    keys: tuple[tuple[int, bytes], ...] = field(default=(), repr=False)


def format_errors(path: str | Path, errors: tuple[ConfigError, ...] | list[ConfigError]) -> str:
    """One line per error, `PATH: key = value: message`, for `dpagent check` and the daemon."""
    return "\n".join(f"{path}: {error}" for error in errors)


def load_config(path: str | Path) -> Config:
    """Read, parse and validate the whole configuration, including the files it names."""
    path = Path(path)
    try:
        document = tomllib.loads(_read_text(path))
    except OSError as e:
        raise ConfigInvalid([ConfigError("", None, f"cannot read: {_reason(e)}")]) from None
    except ValueError as e:  # TOMLDecodeError, a bad encoding, or a NUL in the path
        raise ConfigInvalid([ConfigError("", None, str(e))]) from None
    except RecursionError:
        raise ConfigInvalid([ConfigError("", None, "nested too deeply")]) from None
    errors: list[ConfigError] = []
    config = _build_config(path, document, errors)
    if errors or config is None:
        raise ConfigInvalid(errors)
    return config


def load_keys(path: str | Path) -> tuple[tuple[int, bytes], ...]:
    """Read the authentication keys; the first one is the key frames are sent with.

    Format: one `KEY_ID SECRET_HEX` per non-comment line, key id 1..255, secret at
    least 16 bytes, at most two lines (current and next, for rotation).
    """
    errors: list[ConfigError] = []
    keys = _load_keys(Path(path), "auth.key_file", errors)
    if errors:
        raise ConfigInvalid(errors)
    return keys


# --- building the config from the parsed document ---------------------------------


class _Table:
    """Typed access to one TOML table that records errors instead of raising."""

    def __init__(self, table: dict, where: str, errors: list[ConfigError], allowed: tuple[str, ...]) -> None:
        self.table = table
        self.where = where
        self.errors = errors
        for key, value in table.items():
            if key not in allowed:
                self.error(key, value, _unknown_key_message(key, allowed))

    def key(self, name: str) -> str:
        return f"{self.where}.{_toml_key(name)}" if self.where else _toml_key(name)

    def error(self, name: str, value: object, message: str) -> None:
        self.errors.append(ConfigError(self.key(name), value, message))

    def _absent(self, name: str, default: object) -> object:
        """The default for a key that is not there; None after reporting a required one."""
        if default is _REQUIRED:
            self.error(name, None, "is required")
            return None
        return default

    def integer(self, name: str, low: int, high: int, default: object = _REQUIRED) -> int | None:
        if name not in self.table:
            return self._absent(name, default)  # type: ignore[return-value]
        value = self.table[name]
        if type(value) is int and low <= value <= high:
            return value
        self.error(name, value, f"must be an integer from {low} to {high}")
        return None

    def number(self, name: str, low: float, high: float, default: float) -> float | None:
        """Seconds and the like: ints are welcome, bools, NaN and infinities are not."""
        if name not in self.table:
            return default
        value = self.table[name]
        if _is_number(value) and low <= value <= high:
            return float(value)
        self.error(name, value, f"must be a number from {_num(low)} to {_num(high)}")
        return None

    def boolean(self, name: str, default: bool) -> bool | None:
        value = self.table.get(name, default)
        if type(value) is bool:
            return value
        self.error(name, value, "must be true or false")
        return None

    def string(self, name: str, default: object = _REQUIRED) -> str | None:
        if name not in self.table:
            return self._absent(name, default)  # type: ignore[return-value]
        value = self.table[name]
        if isinstance(value, str):
            return value
        self.error(name, value, "must be a string")
        return None

    def strings(self, name: str) -> list[tuple[str, str]]:
        """A list of strings as (key path, text) pairs; bad elements are reported and skipped."""
        value = self.table.get(name, [])
        if not isinstance(value, list):
            self.error(name, value, "must be a list of strings")
            return []
        good = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                good.append((f"{self.key(name)}[{i}]", item))
            else:
                self.errors.append(ConfigError(f"{self.key(name)}[{i}]", item, "must be a string"))
        return good

    def table_of(self, name: str) -> dict | None:
        value = self.table.get(name, {})
        if isinstance(value, dict):
            return value
        self.error(name, value, "must be a table")
        return None

    def tables_of(self, name: str) -> list[dict] | None:
        value = self.table.get(name, [])
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            return value
        self.error(name, value, f"must be an array of tables ([[{name}]])")
        return None


_TOP_KEYS = ("node", "auth", "control", "heartbeat", "block")
_NODE_KEYS = ("id", "priority", "preempt", "preempt_delay", "advert_interval", "dead_multiplier",
              "realtime_priority", "state_dir")
_HEARTBEAT_KEYS = ("interface", "group", "peers", "port")
_BLOCK_KEYS = ("name", "interface", "prefixes", "addresses", "address_files", "announce")
_ANNOUNCE_KEYS = ("pps", "rounds", "round_delay", "refresh", "arp_mode")
_ARP_MODES = ("request", "reply")


def _build_config(path: Path, document: dict, errors: list[ConfigError]) -> Config | None:
    base = path.parent
    top = _Table(document, "", errors, _TOP_KEYS)
    node = _node(top.table_of("node"), base, errors)
    auth = _auth(top.table_of("auth"), base, errors)
    control_socket = _control(top.table_of("control"), base, errors)
    heartbeat = _heartbeats(top.tables_of("heartbeat"), errors)
    blocks = _blocks(top.tables_of("block"), base, errors)
    if None in (node, auth, control_socket, heartbeat, blocks):
        return None
    key_file, keys = auth  # type: ignore[misc]
    return Config(path, node, heartbeat, key_file, control_socket, blocks, keys)  # type: ignore[arg-type]


def _node(table: dict | None, base: Path, errors: list[ConfigError]) -> NodeConfig | None:
    if table is None:
        return None
    t = _Table(table, "node", errors, _NODE_KEYS)
    state_dir = t.string("state_dir", "/var/lib/dpagent")
    if state_dir is not None and (not state_dir or "\0" in state_dir):
        t.error("state_dir", state_dir, "must be a path")
        state_dir = None
    values = (
        t.integer("id", 1, 2**32 - 1),
        t.integer("priority", 1, 254, 100),
        t.boolean("preempt", True),
        t.number("preempt_delay", 0, MAX_PREEMPT_DELAY, 0.0),
        t.number("advert_interval", 0.01, 10, 0.05),
        t.integer("dead_multiplier", 2, 20, 3),
        t.integer("realtime_priority", 0, 99, 10),
        None if state_dir is None else base / state_dir,
    )
    if None in values:
        return None
    return NodeConfig(*values)  # type: ignore[arg-type]


def _auth(table: dict | None, base: Path, errors: list[ConfigError]) -> tuple[Path, tuple[tuple[int, bytes], ...]] | None:
    if table is None:
        return None
    t = _Table(table, "auth", errors, ("key_file",))
    text = t.string("key_file")
    if text is None:
        return None
    key_file = base / text
    before = len(errors)
    keys = _load_keys(key_file, "auth.key_file", errors)
    return (key_file, keys) if len(errors) == before else None


def _control(table: dict | None, base: Path, errors: list[ConfigError]) -> Path | None:
    if table is None:
        return None
    t = _Table(table, "control", errors, ("socket",))
    text = t.string("socket", str(DEFAULT_CONTROL_SOCKET))
    if text is None:
        return None
    if not text or "\0" in text:
        t.error("socket", text, "must be a path")
        return None
    socket = base / text
    if len(os.fsencode(socket)) > _SUN_PATH_MAX:
        t.error("socket", text, f"must be at most {_SUN_PATH_MAX} bytes long (a Unix socket path)")
        return None
    return socket


def _heartbeats(tables: list[dict] | None, errors: list[ConfigError]) -> tuple[HeartbeatLink, ...] | None:
    if tables is None:
        return None
    if not tables:
        errors.append(ConfigError("heartbeat", None, "at least one [[heartbeat]] link is required"))
        return None
    links = []
    seen: dict[str, int] = {}
    for i, table in enumerate(tables):
        link = _heartbeat(_Table(table, f"heartbeat[{i}]", errors, _HEARTBEAT_KEYS))
        if link is None:
            continue
        if link.interface in seen:
            errors.append(ConfigError(
                f"heartbeat[{i}].interface", link.interface,
                f"already used by heartbeat[{seen[link.interface]}]"))
            continue
        seen[link.interface] = i
        links.append(link)
    return tuple(links) if len(links) == len(tables) else None


def _heartbeat(t: _Table) -> HeartbeatLink | None:
    interface = _interface(t)
    port = t.integer("port", 1, 65535, DEFAULT_PORT)
    has_group, has_peers = "group" in t.table, "peers" in t.table
    if has_group == has_peers:
        message = "give either group or peers, not both" if has_group else "needs a group or peers"
        t.errors.append(ConfigError(t.where, None, message))
        return None
    group = None
    peers: list[IPAddress] = []
    if has_group:
        text = t.string("group")
        group = _address(t, "group", text, multicast=True) if text is not None else None
        ok = group is not None
    else:
        before = len(t.errors)
        pairs = t.strings("peers")
        if not pairs and len(t.errors) == before:
            t.error("peers", [], "must list at least one address")
        for key, text in pairs:
            parsed = _parse_address(text, multicast=False)
            if isinstance(parsed, str):
                t.errors.append(ConfigError(key, text, parsed))
            elif peers and parsed.version != peers[0].version:
                # One socket per link, of one address family.
                t.errors.append(ConfigError(key, text, f"is IPv{parsed.version}, but {peers[0]} is IPv{peers[0].version}: "
                                                       "one heartbeat link speaks one IP version"))
            elif parsed not in peers:
                peers.append(parsed)
        ok = len(t.errors) == before
    if interface is None or port is None or not ok:
        return None
    return HeartbeatLink(interface, group, tuple(peers), port)


def _interface(t: _Table) -> str | None:
    name = t.string("interface")
    if name is None:
        return None
    if not _valid_ifname(name):
        t.error("interface", name, f"must be a Linux interface name (1 to {_IFNAMSIZ - 1} bytes, no '/', ':' or spaces)")
        return None
    return name


def _address(t: _Table, name: str, text: str, multicast: bool) -> IPAddress | None:
    parsed = _parse_address(text, multicast)
    if isinstance(parsed, str):
        t.error(name, text, parsed)
        return None
    return parsed


# --- address blocks ----------------------------------------------------------------


@dataclass
class _Draft:
    """A block being built: prefixes and loose addresses with where each came from."""

    index: int
    name: str
    interface: str | None
    prefixes: dict[IPNetwork, str]
    loose: dict[IPAddress, tuple[str, str]]  # address -> (key path, FILE:LINE or "")
    announce: AnnounceConfig | None


def _blocks(tables: list[dict] | None, base: Path, errors: list[ConfigError]) -> tuple[Block, ...] | None:
    if tables is None:
        return None
    if not tables:
        errors.append(ConfigError("block", None, "at least one [[block]] is required"))
        return None
    before = len(errors)
    drafts = [_draft(i, table, base, errors) for i, table in enumerate(tables)]
    _check_unique_names(drafts, errors)
    _check_overlaps(drafts, errors)
    if len(errors) != before:
        return None
    return tuple(_finish(d) for d in drafts)


def _draft(index: int, table: dict, base: Path, errors: list[ConfigError]) -> _Draft:
    t = _Table(table, f"block[{index}]", errors, _BLOCK_KEYS)
    name = t.string("name")
    if name is not None and not _BLOCK_NAME.fullmatch(name):
        t.error("name", name, "must be 1 to 32 characters from A-Z, a-z, 0-9, '_' and '-'")
    interface = _interface(t)
    before = len(errors)
    draft = _Draft(index, name or "", interface, {}, {}, _announce(t.table_of("announce"), t.key("announce"), errors))
    for key, text in t.strings("prefixes"):
        net = _parse_prefix(text)
        if isinstance(net, str):
            errors.append(ConfigError(key, text, net))
        else:
            draft.prefixes.setdefault(net, key)
    for key, text in t.strings("addresses"):
        _add_loose(draft, key, text, errors)
    for key, text in t.strings("address_files"):
        _add_file(draft, key, text, base / text, errors)
    _fold_own_prefixes(draft)
    if len(errors) == before and not draft.prefixes and not draft.loose:
        errors.append(ConfigError(t.where, None, "has no addresses: give prefixes, addresses or address_files"))
    return draft


def _announce(table: dict | None, where: str, errors: list[ConfigError]) -> AnnounceConfig | None:
    if table is None:
        return None
    t = _Table(table, where, errors, _ANNOUNCE_KEYS)
    values = (
        t.integer("pps", 0, MAX_PPS, 0),
        t.integer("rounds", 1, 100, 2),
        t.number("round_delay", 0.1, MAX_ROUND_DELAY, 2.0),
        _refresh(t),
        t.string("arp_mode", "request"),
    )
    if values[4] is not None and values[4] not in _ARP_MODES:
        t.error("arp_mode", values[4], 'must be "request" or "reply"')
        return None
    if None in values:
        return None
    return AnnounceConfig(*values)  # type: ignore[arg-type]


def _refresh(t: _Table) -> float | None:
    value = t.table.get("refresh", 0)
    if _is_number(value) and (value == 0 or 1 <= value <= MAX_REFRESH):
        return float(value)
    t.error("refresh", value, f"must be 0 (off) or a number from 1 to {MAX_REFRESH}")
    return None


def _add_loose(draft: _Draft, key: str, text: str, errors: list[ConfigError]) -> None:
    parsed = _parse_address(text, multicast=False)
    if isinstance(parsed, str):
        errors.append(ConfigError(key, text, parsed))
    else:
        draft.loose.setdefault(parsed, (key, ""))


def _add_file(draft: _Draft, key: str, text: str, path: Path, errors: list[ConfigError]) -> None:
    """Load a classic `<dev>.addr.external` file; each bad line is its own error."""
    try:
        content = _read_text(path)
    except (OSError, ValueError) as e:
        errors.append(ConfigError(key, text, f"cannot read: {_reason(e)}"))
        return
    for number, line in _classic_lines(content):
        parsed = _parse_address(line, multicast=False)
        if isinstance(parsed, str):
            errors.append(ConfigError(key, text, f"{path}:{number}: {line!r}: {parsed}"))
        else:
            draft.loose.setdefault(parsed, (key, f"{path}:{number}"))


def _classic_lines(content: str) -> list[tuple[int, str]]:
    """(line number, address text) of a classic address file: `#` comments, any blank space, CRLF."""
    lines = []
    for number, line in enumerate(content.split("\n"), start=1):
        text = line.split("#", 1)[0].strip()
        if text:
            lines.append((number, text))
    return lines


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
    return Block(draft.name, draft.interface, prefixes, addresses, draft.announce)  # type: ignore[arg-type]


def _sort_key(item: IPAddress | IPNetwork) -> tuple[int, int]:
    if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return item.version, int(item.network_address)
    return item.version, int(item)


# --- parsing single values -----------------------------------------------------------


def _parse_address(text: str, multicast: bool) -> IPAddress | str:
    """An address, or the error message; `/32` or `/128` host suffixes are tolerated."""
    host, slash, length = text.partition("/")
    address = _inet(host)
    if address is None or (slash and length != str(address.max_prefixlen)):
        return "not an IP address"
    if multicast and not address.is_multicast:
        return "must be a multicast address"
    if not multicast and (address.is_multicast or address.is_unspecified or address.is_loopback):
        return "must be a unicast address"
    return address


def _inet(text: str) -> IPAddress | None:
    """inet_pton is six times faster than ipaddress' parser, which counts for a /16 address file.

    It also refuses what `ip addr add` would not take: scope ids, leading zeros.
    """
    for family, kind in ((socket.AF_INET, ipaddress.IPv4Address), (socket.AF_INET6, ipaddress.IPv6Address)):
        try:
            return kind(socket.inet_pton(family, text))
        except (OSError, ValueError):  # ValueError: a NUL or a character that is not ASCII
            continue
    return None


def _parse_prefix(text: str) -> IPNetwork | str:
    """A network, or the error message; host bits set is an error that shows the fix."""
    if "/" not in text or "%" in text:
        return "not an IP prefix (ADDRESS/LENGTH)"
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return "not an IP prefix (ADDRESS/LENGTH)"
    if ipaddress.ip_interface(text).ip != net.network_address:
        return f"has host bits set (did you mean {net}?)"
    first = net.network_address
    if first.is_multicast or first.is_loopback or first.is_unspecified:
        return "must be a unicast prefix"
    if net.version == 6 and net.num_addresses > MAX_V6_PREFIX_ADDRESSES:
        return "an IPv6 prefix must be /116 or longer (at most 4,096 addresses)"
    if net.version == 4 and net.num_addresses > MAX_V4_PREFIX_ADDRESSES:
        return "an IPv4 prefix must be /8 or longer"
    return net


def _valid_ifname(name: str) -> bool:
    """The kernel's dev_valid_name()."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if not 0 < size < _IFNAMSIZ or name in (".", ".."):
        return False
    return not any(c == "/" or c == ":" or c.isspace() for c in name)


# --- keys ------------------------------------------------------------------------------


def _load_keys(path: Path, key: str, errors: list[ConfigError]) -> tuple[tuple[int, bytes], ...]:
    shown = str(path)
    try:
        mode, content = _read_private(path)
    except (OSError, ValueError) as e:
        errors.append(ConfigError(key, shown, f"cannot read: {_reason(e)}"))
        return ()
    before = len(errors)
    if mode & 0o004:
        errors.append(ConfigError(key, shown, f"is world-readable (mode {mode & 0o777:04o}): chmod 600 it"))
    if mode & 0o022:
        errors.append(ConfigError(key, shown, f"is writable by group or others (mode {mode & 0o777:04o}): chmod 600 it"))
    keys: list[tuple[int, bytes]] = []
    bad_lines = 0
    for number, line in _classic_lines(content):
        problem = _key_line(line, keys)
        if problem:
            # Never echo the line: it holds a secret.
            errors.append(ConfigError(key, shown, f"{path}:{number}: {problem}"))
            bad_lines += 1
    if not keys and not bad_lines:
        errors.append(ConfigError(key, shown, "contains no keys (expected lines of KEY_ID SECRET_HEX)"))
    if len(keys) > MAX_KEYS:
        errors.append(ConfigError(key, shown, f"has {len(keys)} keys, at most {MAX_KEYS} (current and next)"))
    return tuple(keys) if len(errors) == before else ()


def _key_line(line: str, keys: list[tuple[int, bytes]]) -> str:
    """Parse one key line into `keys`; return the problem, or "" when the line is good."""
    fields = line.split()
    if len(fields) != 2 or not fields[0].isascii() or not fields[0].isdigit():
        return "expected KEY_ID SECRET_HEX"
    key_id = int(fields[0])
    if not 1 <= key_id <= 255:
        return "key id must be from 1 to 255"
    if any(key_id == k for k, _ in keys):
        return f"key id {key_id} appears twice"
    try:
        secret = bytes.fromhex(fields[1])
    except ValueError:
        return "secret must be hexadecimal with an even number of digits"
    if len(secret) < MIN_SECRET_BYTES:
        return f"secret must be at least {MIN_SECRET_BYTES * 2} hex digits ({MIN_SECRET_BYTES} bytes)"
    keys.append((key_id, secret))
    return ""


# --- presentation ----------------------------------------------------------------------


def _show(value: object) -> str:
    """A value as it would be written in TOML, cut short when long."""
    text = _toml(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + "".join(_toml_char(c) for c in value) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _toml_char(char: str) -> str:
    """Escape what would break the one-line-per-error output (newlines, controls, separators)."""
    if char in '"\\':
        return "\\" + char
    if char.isprintable():
        return char
    return f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}"


def _toml_key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _toml(name)


def _num(value: float) -> str:
    """0.01, 10, 0.1: bounds as a person writes them."""
    return str(int(value)) if value == int(value) else str(value)


def _is_number(value: object) -> bool:
    return type(value) is int or (type(value) is float and math.isfinite(value))


def _unknown_key_message(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f'unknown key (did you mean "{close[0]}"?)' if close else "unknown key"


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)


# --- reading the files the configuration names ------------------------------------


def _read_text(path: Path) -> str:
    """A regular file as text; a UTF-8 byte-order mark is dropped, bad bytes never raise."""
    return _read_regular(path)[1].decode("utf-8-sig", "replace")


def _read_private(path: Path) -> tuple[int, str]:
    """A secret file's permission bits and its text."""
    mode, data = _read_regular(path)
    return stat.S_IMODE(mode), data.decode("utf-8-sig", "replace")


def _read_regular(path: Path) -> tuple[int, bytes]:
    # O_NONBLOCK so that a FIFO named by mistake fails the check below instead of hanging.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return info.st_mode, f.read()
    finally:
        os.close(fd)

