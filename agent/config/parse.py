"""From TOML values to checked Python values, recording errors instead of raising.

`Table` checks each key against its schema entry (type, range, default), so a
key's limits live in the schema alone; the functions below parse the values
TOML has no type for: addresses, prefixes, interface names.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import socket
from pathlib import Path

from agent.config.messages import ConfigError, toml_key
from agent.config.schema import (
    BLOCK_NAME_MAX, BOOLEAN, IFNAMSIZ, INTEGER, INTERFACE, MAX_V6_BLOCK_ADDRESSES, MIN_V4_PREFIXLEN,
    MIN_V6_PREFIXLEN, NAME, NUMBER, NUMBER_OR_OFF, PATH, REQUIRED, STRING, TABLE, TABLES, Key,
    describe,
)
from agent.core.packing import IPAddress, IPNetwork

_BLOCK_NAME = re.compile(rf"[A-Za-z0-9_-]{{1,{BLOCK_NAME_MAX}}}")


class Table:
    """Typed access to one TOML table, checked against its schema keys; errors are recorded."""

    def __init__(self, table: dict, where: str, errors: list[ConfigError], keys: tuple[Key, ...]) -> None:
        self.table = table
        self.where = where
        self.errors = errors
        self.keys = {k.name: k for k in keys}
        for name, value in table.items():
            if name not in self.keys:
                self.error(name, value, _unknown_key_message(name, tuple(self.keys)))

    def key(self, name: str) -> str:
        """The key's path as the operator writes it: `block[0].announce.pps`."""
        return f"{self.where}.{toml_key(name)}" if self.where else toml_key(name)

    def error(self, name: str, value: object, message: str) -> None:
        self.errors.append(ConfigError(self.key(name), value, message))

    def value(self, name: str) -> object:
        """The checked value, its default when absent, or None after recording the error.

        Numbers come back as floats; an absent table or array of tables as an empty one.
        """
        k = self.keys[name]
        if name not in self.table:
            if k.default is REQUIRED:
                self.error(name, None, "is required")
                return None
            return _EMPTY.get(k.type, k.default)
        value = self.table[name]
        if k.type in _TEXT and not isinstance(value, str):
            self.error(name, value, "must be a string")
            return None
        if not _CHECKS[k.type](value, k.range):
            self.error(name, value, f"must be {describe(k)}")
            return None
        return float(value) if k.type in (NUMBER, NUMBER_OR_OFF) else value

    def path(self, name: str, base: Path) -> Path | None:
        """A path key, relative to `base` (the configuration file's directory), or None."""
        text = self.value(name)
        return None if text is None else base / text  # type: ignore[operator]

    def strings(self, name: str) -> list[tuple[str, str]]:
        """A list of strings as (key path, text) pairs; bad elements are reported and skipped."""
        value = self.table.get(name, [])
        if not isinstance(value, list):
            self.error(name, value, f"must be {describe(self.keys[name])}")
            return []
        good = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                good.append((f"{self.key(name)}[{i}]", item))
            else:
                self.errors.append(ConfigError(f"{self.key(name)}[{i}]", item, "must be a string"))
        return good


def _is_number(value: object) -> bool:
    """Seconds and the like: ints are welcome, bools, NaN and infinities are not."""
    return type(value) is int or (type(value) is float and math.isfinite(value))


_CHECKS = {
    INTEGER: lambda v, r: type(v) is int and r[0] <= v <= r[1],
    NUMBER: lambda v, r: _is_number(v) and r[0] <= v <= r[1],
    NUMBER_OR_OFF: lambda v, r: _is_number(v) and (v == 0 or r[0] <= v <= r[1]),
    BOOLEAN: lambda v, r: type(v) is bool,
    STRING: lambda v, r: r is None or v in r,
    PATH: lambda v, r: v != "" and "\0" not in v,
    INTERFACE: lambda v, r: _valid_ifname(v),
    NAME: lambda v, r: _BLOCK_NAME.fullmatch(v) is not None,
    TABLE: lambda v, r: isinstance(v, dict),
    TABLES: lambda v, r: isinstance(v, list) and all(isinstance(t, dict) for t in v),
}
# Types whose values are strings first: anything else is "must be a string".
_TEXT = (STRING, PATH, INTERFACE, NAME)
# What an absent table or array of tables reads as: there is nothing in it.
_EMPTY = {TABLE: {}, TABLES: []}


def _unknown_key_message(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f'unknown key (did you mean "{close[0]}"?)' if close else "unknown key"


def parse_address(text: str, multicast: bool) -> IPAddress | str:
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


def parse_prefix(text: str) -> IPNetwork | str:
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
    if net.version == 6 and net.prefixlen < MIN_V6_PREFIXLEN:
        return f"an IPv6 prefix must be /{MIN_V6_PREFIXLEN} or longer (at most {MAX_V6_BLOCK_ADDRESSES:,} addresses)"
    if net.version == 4 and net.prefixlen < MIN_V4_PREFIXLEN:
        return f"an IPv4 prefix must be /{MIN_V4_PREFIXLEN} or longer"
    return net


def _valid_ifname(name: str) -> bool:
    """The kernel's dev_valid_name()."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if not 0 < size < IFNAMSIZ or name in (".", ".."):
        return False
    return not any(c == "/" or c == ":" or c.isspace() for c in name)
