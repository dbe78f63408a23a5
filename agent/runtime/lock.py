"""One agent per state directory: an exclusive lock taken before anything else.

A second instance (another config, another control socket) would otherwise
remove the running master's routes as "leftovers" at its start-up. The lock is
an flock on a file in state_dir, so it dies with the process that holds it,
SIGKILL included, and `dpagent cleanup` can tell a dead agent from a live one.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = "dpagent.lock"


class LockHeld(Exception):
    """Another dpagent holds the state directory."""


def acquire(state_dir: Path) -> int:
    """The locked file's descriptor, kept open for the life of the process."""
    state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    path = state_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise LockHeld(f"another dpagent is running (pid {holder}) with the state directory {state_dir}") from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
