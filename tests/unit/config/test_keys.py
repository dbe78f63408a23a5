"""agent.config.keys: the key file's format and permissions, and that no error shows a secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.config import ConfigInvalid, load_keys
from config_documents import SECRET


# --- key file -----------------------------------------------------------------------------


def key_errors(path: Path) -> list[str]:
    with pytest.raises(ConfigInvalid) as caught:
        load_keys(path)
    return [str(e).replace(str(path.parent), "DIR") for e in caught.value.errors]


def test_keys_load_in_order(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(f"# rotation in progress\r\n7 {SECRET}  # current\n\n3 {'ab' * 32}\n")
    path.chmod(0o600)
    assert load_keys(path) == ((7, bytes.fromhex(SECRET)), (3, b"\xab" * 32))


@pytest.mark.parametrize(("mode", "expected"), [
    (0o600, []),
    (0o640, []),
    (0o400, []),
    (0o644, ['auth.key_file = "DIR/key": is world-readable (mode 0644): chmod 600 it']),
    (0o660, ['auth.key_file = "DIR/key": is writable by group or others (mode 0660): chmod 600 it']),
    (0o666, ['auth.key_file = "DIR/key": is world-readable (mode 0666): chmod 600 it',
             'auth.key_file = "DIR/key": is writable by group or others (mode 0666): chmod 600 it']),
])
def test_key_file_permissions(tmp_path: Path, mode: int, expected: list[str]) -> None:
    path = tmp_path / "key"
    path.write_text(f"1 {SECRET}\n")
    path.chmod(mode)
    if expected:
        assert key_errors(path) == expected
    else:
        assert load_keys(path) == ((1, bytes.fromhex(SECRET)),)


@pytest.mark.parametrize(("content", "expected"), [
    ("", "contains no keys (expected lines of KEY_ID SECRET_HEX)"),
    ("# only a comment\n\n", "contains no keys (expected lines of KEY_ID SECRET_HEX)"),
    (f"{SECRET}\n", "DIR/key:1: expected KEY_ID SECRET_HEX"),
    (f"0 {SECRET}\n", "DIR/key:1: key id must be from 1 to 255"),
    (f"256 {SECRET}\n", "DIR/key:1: key id must be from 1 to 255"),
    ("1 00112233\n", "DIR/key:1: secret must be at least 32 hex digits (16 bytes)"),
    (f"1 {SECRET}z\n", "DIR/key:1: secret must be hexadecimal with an even number of digits"),
    (f"1 {SECRET}\n1 {SECRET}\n", "DIR/key:2: key id 1 appears twice"),
    (f"1 {SECRET}\n2 {SECRET}\n3 {SECRET}\n", "has 3 keys, at most 2 (current and next)"),
])
def test_key_file_format(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "key"
    path.write_text(content)
    path.chmod(0o600)
    assert key_errors(path) == [f'auth.key_file = "DIR/key": {expected}']


def test_key_file_missing_or_not_a_file(tmp_path: Path) -> None:
    assert key_errors(tmp_path / "key") == ['auth.key_file = "DIR/key": cannot read: No such file or directory']
    os.mkfifo(tmp_path / "fifo", 0o600)
    assert key_errors(tmp_path / "fifo") == ['auth.key_file = "DIR/fifo": cannot read: not a regular file']


def test_key_errors_never_show_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(f"1 {SECRET} extra\n")
    path.chmod(0o644)
    assert all(SECRET not in line for line in key_errors(path))

