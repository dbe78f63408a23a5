"""Asks BIRD whether it runs with the kernel protocols that learn dpagent's routes.

The agent talks to BIRD's control socket itself, as birdc does, instead of
running birdc: the unit's system-call filter and a missing birdc then change
nothing. One short read-only exchange per check, bounded in time and size, in a
worker thread; a BIRD that is missing, hung or answers garbage is a problem in
the result, never an exception.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from agent.core import bird

TIMEOUT = 2.0


class BirdUnreachable(Exception):
    """No usable answer from BIRD's control socket; the message says why."""


def _reply(sock: socket.socket, deadline: float) -> list[tuple[int, str]]:
    reader = bird.ReplyReader()
    while True:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        data = sock.recv(65536)
        if not data:
            raise BirdUnreachable("BIRD closed the control connection")
        lines = reader.feed(data)
        if lines is not None:
            return lines


def ask(path: Path, command: str, timeout: float = TIMEOUT) -> tuple[str | None, list[tuple[int, str]]]:
    """(BIRD's version, the reply's lines) for one command on the control socket at `path`."""
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            hello = _reply(sock, deadline)
            sock.sendall(command.encode() + b"\n")
            return bird.version(hello), _reply(sock, deadline)
    except FileNotFoundError:
        raise BirdUnreachable(f"no control socket at {path}: is BIRD running?") from None
    except ConnectionRefusedError:
        raise BirdUnreachable(f"nothing listens on {path}: BIRD is not running") from None
    except PermissionError:
        raise BirdUnreachable(f"not allowed to connect to {path} (the agent's user must be in BIRD's group)") from None
    except TimeoutError:
        raise BirdUnreachable(f"BIRD did not answer on {path} within {timeout:g} s") from None
    except bird.ReplyError as exc:
        raise BirdUnreachable(f"BIRD's answer on {path} is not its control protocol: {exc}") from None
    except OSError as exc:
        raise BirdUnreachable(f"{path}: {exc.strerror or exc}") from None


def check(path: Path, wanted: tuple[str, ...]) -> dict:
    """What status shows of BIRD: whether it answered, its version, each wanted kernel
    protocol, and the problem (None when BIRD runs with all of them up)."""
    result: dict = {"socket": str(path), "running": False, "version": None, "protocols": {}, "problem": None,
                    "checked_at": time.time()}
    try:
        result["version"], lines = ask(path, "show protocols all")
    except BirdUnreachable as exc:
        result["problem"] = str(exc)
        return result
    result["running"] = True
    refused = bird.error(lines)
    if refused is not None:
        result["problem"] = f"BIRD refused `show protocols all`: {refused}"
        return result
    result["protocols"], result["problem"] = bird.assess(bird.protocols(lines), wanted)
    return result
