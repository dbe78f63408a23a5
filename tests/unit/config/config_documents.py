"""Shared by the agent.config tests: a tiny TOML writer and the documents they load."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from agent.config import ConfigInvalid, format_errors, load_config

SECRET = "00112233445566778899aabbccddeeff"


# --- a tiny TOML writer: inline tables are enough for every document we need ---------


def toml_string(text: str) -> str:
    out = []
    for c in text:
        if c in '"\\' or ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(document: dict) -> str:
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in document.items())


# --- documents ---------------------------------------------------------------------------


def minimal() -> dict:
    return {
        "node": {"id": 1},
        "auth": {"key_file": "key"},
        "heartbeat": [{"interface": "eth0", "group": "224.0.0.18"}],
        "block": [{"name": "ext", "interface": "eth1", "addresses": ["192.0.2.10"]}],
    }


def write(workdir: Path, document: dict) -> Path:
    path = workdir / "dpagent.toml"
    path.write_text(toml_document(document))
    return path


def error_lines(workdir: Path, document: dict) -> list[str]:
    path = write(workdir, document)
    with pytest.raises(ConfigInvalid) as caught:
        load_config(path)
    return format_errors(path, caught.value.errors).splitlines()


def one_error(workdir: Path, document: dict) -> str:
    """The single formatted error line, with the temporary directory shown as DIR."""
    lines = error_lines(workdir, document)
    assert len(lines) == 1, lines
    return lines[0].replace(str(workdir), "DIR")

