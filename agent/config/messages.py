"""What the operator reads: one error per problem, values shown as they are written in TOML.

Validation never stops at the first problem: every check appends a `ConfigError`
and the caller gets them all in one `ConfigInvalid`, so `dpagent check` lists a
whole broken file in one run. Values are escaped so that every error stays one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


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
        return f"{self.key} = {show(self.value)}: {self.message}"


class ConfigInvalid(Exception):
    """The configuration (or key file) has one or more errors, all of them in `errors`."""

    def __init__(self, errors: tuple[ConfigError, ...] | list[ConfigError]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


def format_errors(path: str | Path, errors: tuple[ConfigError, ...] | list[ConfigError]) -> str:
    """One line per error, `PATH: key = value: message`, for `dpagent check` and the daemon."""
    return "\n".join(f"{path}: {error}" for error in errors)


def show(value: object) -> str:
    """A value as it would be written in TOML, cut short when long."""
    text = toml(value)
    return text if len(text) <= 80 else text[:77] + "..."


def toml(value: object) -> str:
    """A value in TOML syntax, on one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + "".join(_toml_char(c) for c in value) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _toml_char(char: str) -> str:
    """Escape what would break the one-line-per-error output (newlines, controls, separators)."""
    if char in '"\\':
        return "\\" + char
    if char.isprintable():
        return char
    return f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}"


def toml_key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else toml(name)


def number(value: float) -> str:
    """0.01, 10, 0.1: bounds as a person writes them."""
    return str(int(value)) if value == int(value) else str(value)


def reason(error: Exception) -> str:
    """Why a file could not be read, without the path the caller already shows."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)
