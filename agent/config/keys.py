"""The key file: `KEY_ID SECRET_HEX` lines, the sending key first.

It holds secrets, so no error ever shows a line of it, only its number, and a
file that others could read or change is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

from agent.config.files import classic_lines, read_text
from agent.config.messages import ConfigError, ConfigInvalid, reason
from agent.config.schema import KEY_ID, MAX_KEYS, MIN_SECRET_BYTES

Keys = tuple[tuple[int, bytes], ...]

# Half the shortest secret in hex is already too much to show; no IP address has
# more than four hex digits in a row.
_SECRET_LIKE = re.compile(rf"[0-9A-Fa-f]{{{MIN_SECRET_BYTES},}}")


def load_keys(path: str | Path) -> Keys:
    """Read the authentication keys; the first one is the key frames are sent with.

    The format is the help of `auth.key_file` in the schema.
    """
    errors: list[ConfigError] = []
    keys = read_keys(Path(path), "auth.key_file", errors)
    if errors:
        raise ConfigInvalid(errors)
    return keys


def read_keys(path: Path, key: str, errors: list[ConfigError]) -> Keys:
    """The keys of `path`, or () after appending every problem, under `key`, to `errors`."""
    shown = str(path)
    try:
        mode, content = read_text(path)
    except (OSError, ValueError) as e:
        errors.append(ConfigError(key, shown, f"cannot read: {reason(e)}"))
        return ()
    before = len(errors)
    if mode & 0o004:
        errors.append(ConfigError(key, shown, f"is world-readable (mode {mode:04o}): chmod 600 it"))
    if mode & 0o022:
        errors.append(ConfigError(key, shown, f"is writable by group or others (mode {mode:04o}): chmod 600 it"))
    keys: list[tuple[int, bytes]] = []
    bad_lines = 0
    for number, line in classic_lines(content):
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
    if not KEY_ID[0] <= key_id <= KEY_ID[1]:
        return f"key id must be from {KEY_ID[0]} to {KEY_ID[1]}"
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


def looks_secret(line: str) -> bool:
    """Whether a line may be (part of) a key line, so that no error may show it."""
    return _SECRET_LIKE.search(line) is not None
