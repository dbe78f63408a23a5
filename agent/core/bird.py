"""BIRD's control protocol (what birdc speaks), as bytes in and facts out.

Every reply line starts with a four-digit code and a '-' (more lines follow) or
a ' ' (the last line of the reply); a line that starts with a space continues
the previous code. 0xxx codes are the end of an action, 1xxx table rows, 8xxx
and 9xxx errors. The agent only reads: `show protocols all` tells which of the
kernel protocols that learn dpagent's routes exist, are up, and how many routes
they imported. Whatever BIRD sends, a reply parses to something or to a problem,
never to an exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# One reply must fit: `show protocols all` is ~1 KiB per protocol.
MAX_REPLY_BYTES = 1 << 20
PROTOCOL_ROW = 1002
PROTOCOL_DETAILS = 1006
HELLO = 1


class ReplyError(ValueError):
    """BIRD's reply was not what its protocol says a reply is."""


@dataclass(frozen=True)
class Protocol:
    name: str
    proto: str
    table: str
    state: str
    info: str
    imported: int | None = None


class ReplyReader:
    """Collects bytes until one whole reply has arrived; `feed` returns it, as (code, text) lines."""

    def __init__(self) -> None:
        self._buffer = b""
        self._lines: list[tuple[int, str]] = []
        self._code = 0
        self._size = 0

    def feed(self, data: bytes) -> list[tuple[int, str]] | None:
        self._buffer += data
        self._size += len(data)
        if self._size > MAX_REPLY_BYTES:
            raise ReplyError(f"reply longer than {MAX_REPLY_BYTES} bytes")
        while b"\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n", 1)
            line = raw.decode("utf-8", "replace")
            if line.startswith(" "):
                self._lines.append((self._code, line[1:]))
                continue
            head = line[:4]
            if len(line) < 5 or not head.isdigit() or not head.isascii() or line[4] not in "- ":
                raise ReplyError(f"not a reply line: {line[:60]!r}")
            self._code = int(head)
            self._lines.append((self._code, line[5:]))
            if line[4] == " ":
                done, self._lines = self._lines, []
                self._size = len(self._buffer)
                return done
        return None


def error(lines: Sequence[tuple[int, str]]) -> str | None:
    """BIRD's own words when the reply is an error (8xxx, 9xxx), else None."""
    bad = [text for code, text in lines if code >= 8000]
    return "; ".join(t.strip() for t in bad) or None if bad else None


def protocols(lines: Iterable[tuple[int, str]]) -> dict[str, Protocol]:
    """The protocol rows of a `show protocols [all]` reply, with the routes each imported."""
    found: dict[str, Protocol] = {}
    last: str | None = None
    for code, text in lines:
        if code == PROTOCOL_ROW:
            fields = text.split(None, 5)
            if len(fields) < 4:
                last = None
                continue
            name, proto, table, state = fields[:4]
            found[name] = Protocol(name, proto, table, state, fields[5].strip() if len(fields) > 5 else "")
            last = name
        elif code == PROTOCOL_DETAILS and last is not None:
            imported = _imported(text)
            if imported is not None:
                previous = found[last]
                found[last] = Protocol(previous.name, previous.proto, previous.table, previous.state, previous.info,
                                       (previous.imported or 0) + imported)
    return found


def _imported(text: str) -> int | None:
    """N from `Routes:  N imported, M exported, ...`."""
    label, _, rest = text.strip().partition(":")
    if label != "Routes":
        return None
    words = rest.split()
    if len(words) >= 2 and words[1].rstrip(",") == "imported" and words[0].isdigit():
        return int(words[0])
    return None


def version(lines: Sequence[tuple[int, str]]) -> str | None:
    """"2.0.12" from the greeting `0001 BIRD 2.0.12 ready.`."""
    for code, text in lines:
        words = text.split()
        if code == HELLO and len(words) >= 2 and words[0] == "BIRD":
            return words[1]
    return None


def assess(found: Mapping[str, Protocol], wanted: Sequence[str]) -> tuple[dict[str, dict], str | None]:
    """Each wanted protocol as status shows it, and a problem if any is missing, of
    another kind than Kernel, or not up."""
    shown: dict[str, dict] = {}
    problems = []
    for name in wanted:
        protocol = found.get(name)
        if protocol is None:
            shown[name] = {"state": "missing"}
            problems.append(f"no protocol {name}")
            continue
        shown[name] = {"proto": protocol.proto, "state": protocol.state, "info": protocol.info,
                       "imported": protocol.imported}
        if protocol.proto != "Kernel":
            problems.append(f"{name} is a {protocol.proto} protocol, not Kernel")
        elif protocol.state != "up":
            problems.append(f"{name} is {protocol.state}" + (f" ({protocol.info})" if protocol.info else ""))
    return shown, "; ".join(problems) or None
