"""Read the TOML configuration and build the model from its checked tables.

Relative paths in the configuration are relative to the configuration file's
directory, so a config and its key and address files can be moved together.
A table that has errors builds as None; the errors say why.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import TypeVar

from agent.config.blocks import build_blocks
from agent.config.files import read_text
from agent.config.keys import Keys, read_keys
from agent.config.messages import ConfigError, ConfigInvalid, reason
from agent.config.model import BgpConfig, Block, Config, ConntrackConfig, HeartbeatLink, NodeConfig
from agent.config.parse import Table, parse_address
from agent.config.schema import (
    BIRD_SYMBOL_MAX, CONNTRACK_PROTOCOLS, MAX_BIRD_PROTOCOLS, MAX_CONNTRACK_IGNORE, SUN_PATH_MAX, TABLES_BY_PATH,
)
from agent.core.packing import IPAddress

T = TypeVar("T")

# The IP protocol numbers of the conntrack protocols the schema names.
PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132, "dccp": 33, "udplite": 136}
_BIRD_SYMBOL = re.compile(rf"[A-Za-z][A-Za-z0-9_]{{0,{BIRD_SYMBOL_MAX - 1}}}")


def load_config(path: str | Path) -> Config:
    """Read, parse and validate the whole configuration, including the files it names."""
    path = Path(path)
    try:
        document = tomllib.loads(read_text(path)[1])
    except OSError as e:
        raise ConfigInvalid([ConfigError("", None, f"cannot read: {reason(e)}")]) from None
    except ValueError as e:  # TOMLDecodeError, a bad encoding, or a NUL in the path
        raise ConfigInvalid([ConfigError("", None, str(e))]) from None
    except RecursionError:
        raise ConfigInvalid([ConfigError("", None, "nested too deeply")]) from None
    errors: list[ConfigError] = []
    config = _build_config(path, document, errors)
    if errors or config is None:
        raise ConfigInvalid(errors)
    return config


def _build_config(path: Path, document: dict, errors: list[ConfigError]) -> Config | None:
    base = path.parent
    top = Table(document, "", errors, TABLES_BY_PATH[""])
    node = _built(top, "node", base, _node)
    auth = _built(top, "auth", base, _auth)
    control_socket = _built(top, "control", base, _control)
    heartbeat = _heartbeats(top.value("heartbeat"), errors)  # type: ignore[arg-type]
    blocks = build_blocks(top.value("block"), base, errors)  # type: ignore[arg-type]
    listen = _metrics(top, heartbeat, blocks)
    conntrack = _conntrack(top, blocks)
    bgp = _built(top, "bgp", base, _bgp)
    if None in (node, auth, control_socket, heartbeat, blocks, bgp) or listen is False or conntrack is False:
        return None
    key_file, keys = auth  # type: ignore[misc]
    return Config(path, node, heartbeat, key_file, control_socket, blocks, keys,  # type: ignore[arg-type]
                  metrics_listen=listen or None, conntrack=conntrack or None, bgp=bgp)  # type: ignore[arg-type]


def _conntrack(top: Table, blocks: tuple[Block, ...] | None) -> ConntrackConfig | None | bool:
    """The sync's settings; None when off, False after an error."""
    table = top.value("conntrack")
    if table is None or "conntrack" not in top.table:
        return None
    t = Table(table, "conntrack", top.errors, TABLES_BY_PATH["conntrack"])  # type: ignore[arg-type]
    before = len(t.errors)
    values = {name: t.value(name) for name in ("interface", "port", "mode", "event_buffer", "expected_entries",
                                                "window_tracking", "max_datagram")}
    peers: list[IPAddress] = []
    if "peers" in t.table:
        _peers(t, peers)
    else:
        t.error("peers", None, "is required: the addresses of the other nodes on the sync interface")
    ignore = []
    for key, text in t.strings("ignore"):
        try:
            parsed = ip_network(text)
        except ValueError:
            t.errors.append(ConfigError(key, text, "must be an IP address or prefix (no host bits)"))
            continue
        if any(parsed.overlaps(p) for b in blocks or () for p in b.prefixes) or any(
                a in parsed for b in blocks or () for a in b.addresses):
            t.errors.append(ConfigError(key, text, "holds block addresses: their flows are the ones to sync"))
        else:
            ignore.append(parsed)
    protocols = set()
    for key, text in t.strings("protocols"):
        if text not in PROTOCOL_NUMBERS:
            t.errors.append(ConfigError(key, text, f"must be one of {', '.join(CONNTRACK_PROTOCOLS)}"))
        else:
            protocols.add(PROTOCOL_NUMBERS[text])
    if len(ignore) > MAX_CONNTRACK_IGNORE:
        t.error("ignore", [str(p) for p in ignore], f"must list at most {MAX_CONNTRACK_IGNORE} prefixes (the rest "
                "of the native filter's 64 holds the links' own addresses)")
    if "protocols" in t.table and not protocols and len(t.errors) == before:
        t.error("protocols", [], "must name at least one protocol")
    if len(t.errors) != before or None in values.values():
        return False
    return ConntrackConfig(peers=tuple(peers), ignore=tuple(ignore),  # type: ignore[arg-type]
                           protocols=frozenset(protocols or PROTOCOL_NUMBERS.values()), **values)


def _metrics(top: Table, heartbeat: tuple[HeartbeatLink, ...] | None,
             blocks: tuple[Block, ...] | None) -> tuple[str, int] | None | bool:
    """The metrics listener's (address, port); None when off, False after an error."""
    table = top.value("metrics")
    if table is None:
        return None
    t = Table(table, "metrics", top.errors, TABLES_BY_PATH["metrics"])  # type: ignore[arg-type]
    text = t.value("listen")
    if text is None:
        return None
    host, sep, port = str(text).rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    try:
        address = ip_address(host)
        number = int(port)
    except ValueError:
        address, number = None, 0
    # An IPv6 address in brackets, as in a URL: "::1:9412" could be either.
    if not sep or address is None or not 1 <= number <= 65535 or (address.version == 6) != bracketed:
        t.error("listen", text, 'must be ADDRESS:PORT, e.g. "127.0.0.1:9412" or "[::1]:9412"')
        return False
    taken = {str(a) for link in heartbeat or () for a in (link.group, *link.peers) if a is not None}
    if str(address) in taken or any(address in p for b in blocks or () for p in b.prefixes) or any(
            address == a for b in blocks or () for a in b.addresses):
        t.error("listen", text, "is an address of a block or a heartbeat link: metrics must not listen there")
        return False
    return str(address), number


def _built(top: Table, name: str, base: Path, build: Callable[[Table, Path], T | None]) -> T | None:
    """What `build` makes of the sub-table `name`, or None when that is not a table."""
    table = top.value(name)
    if table is None:
        return None
    return build(Table(table, name, top.errors, TABLES_BY_PATH[name]), base)  # type: ignore[arg-type]


def _node(t: Table, base: Path) -> NodeConfig | None:
    values = {name: t.path(name, base) if name == "state_dir" else t.value(name) for name in t.keys}
    return None if None in values.values() else NodeConfig(**values)  # type: ignore[arg-type]


def _auth(t: Table, base: Path) -> tuple[Path, Keys] | None:
    key_file = t.path("key_file", base)
    if key_file is None:
        return None
    before = len(t.errors)
    keys = read_keys(key_file, t.key("key_file"), t.errors)
    return (key_file, keys) if len(t.errors) == before else None


def _control(t: Table, base: Path) -> Path | None:
    socket = t.path("socket", base)
    if socket is not None and len(os.fsencode(socket)) > SUN_PATH_MAX:
        t.error("socket", str(socket), f"must be at most {SUN_PATH_MAX} bytes long (a Unix socket path)")
        return None
    return socket


def _bgp(t: Table, base: Path) -> BgpConfig | None:
    before = len(t.errors)
    socket = t.path("bird_socket", base)
    if socket is not None and len(os.fsencode(socket)) > SUN_PATH_MAX:
        t.error("bird_socket", str(socket), f"must be at most {SUN_PATH_MAX} bytes long (a Unix socket path)")
    names: list[str] = []
    pairs = t.strings("protocols") if "protocols" in t.table else [("", n) for n in t.keys["protocols"].default]
    if not pairs and len(t.errors) == before:
        t.error("protocols", [], "must name at least one BIRD kernel protocol")
    for key, name in pairs:
        if not _BIRD_SYMBOL.fullmatch(name):
            t.errors.append(ConfigError(key, name, f"must be a BIRD protocol name: a letter, then up to "
                                                   f"{BIRD_SYMBOL_MAX - 1} letters, digits or '_'"))
        elif name in names:
            t.errors.append(ConfigError(key, name, "is listed twice"))
        else:
            names.append(name)
    if len(names) > MAX_BIRD_PROTOCOLS:
        t.error("protocols", names, f"must name at most {MAX_BIRD_PROTOCOLS} protocols")
    if len(t.errors) != before:
        return None
    return BgpConfig(socket, tuple(names))  # type: ignore[arg-type]


def _heartbeats(tables: list[dict] | None, errors: list[ConfigError]) -> tuple[HeartbeatLink, ...] | None:
    if tables is None:
        return None
    if not tables:
        errors.append(ConfigError("heartbeat", None, "at least one [[heartbeat]] link is required"))
        return None
    links = []
    seen: dict[str, int] = {}
    for i, table in enumerate(tables):
        link = _heartbeat(Table(table, f"heartbeat[{i}]", errors, TABLES_BY_PATH["heartbeat"]))
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


def _heartbeat(t: Table) -> HeartbeatLink | None:
    interface = t.value("interface")
    port = t.value("port")
    has_group, has_peers = "group" in t.table, "peers" in t.table
    if has_group == has_peers:
        message = "give either group or peers, not both" if has_group else "needs a group or peers"
        t.errors.append(ConfigError(t.where, None, message))
        return None
    group = None
    peers: list[IPAddress] = []
    if has_group:
        group = _group(t)
        ok = group is not None
    else:
        before = len(t.errors)
        _peers(t, peers)
        ok = len(t.errors) == before
    if interface is None or port is None or not ok:
        return None
    return HeartbeatLink(interface, group, tuple(peers), port)  # type: ignore[arg-type]


def _group(t: Table) -> IPAddress | None:
    text = t.value("group")
    if text is None:
        return None
    parsed = parse_address(text, multicast=True)  # type: ignore[arg-type]
    if isinstance(parsed, str):
        t.error("group", text, parsed)
        return None
    return parsed


def _peers(t: Table, peers: list[IPAddress]) -> None:
    """Append the distinct peer addresses to `peers`, recording every bad one."""
    before = len(t.errors)
    pairs = t.strings("peers")
    if not pairs and len(t.errors) == before:
        t.error("peers", [], "must list at least one address")
    for key, text in pairs:
        parsed = parse_address(text, multicast=False)
        if isinstance(parsed, str):
            t.errors.append(ConfigError(key, text, parsed))
        elif peers and parsed.version != peers[0].version:
            # One socket per link, of one address family.
            t.errors.append(ConfigError(key, text, f"is IPv{parsed.version}, but {peers[0]} is IPv{peers[0].version}: "
                                                   "one link speaks one IP version"))
        elif parsed not in peers:
            peers.append(parsed)
