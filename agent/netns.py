"""Network-namespace tooling shared by tests and benchmarks.

`enter` moves only the calling thread into a namespace, so a test can open a
socket there and keep driving the rest from the host; every namespace made by a
Namespaces object is deleted by close(), also after a failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import subprocess
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def ip(*args: str, netns: str | None = None, stdin: str | None = None) -> str:
    """Run iproute2 `ip` (in netns if given); raise with its stderr on failure."""
    cmd = ["ip"] + (["-n", netns] if netns else []) + list(args)
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def enter(name: str) -> Iterator[None]:
    """Move this thread into namespace `name` for the with block; sockets and
    child processes created inside belong to it."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


class Namespaces:
    """Creates uniquely named namespaces (lo up) and deletes them on close()."""

    def __init__(self, prefix: str = "dpb") -> None:
        self.prefix = prefix
        self.names: list[str] = []

    def new(self, role: str) -> str:
        name = f"{self.prefix}-{role}-{secrets.token_hex(3)}"
        ip("netns", "add", name)
        self.names.append(name)
        ip("link", "set", "lo", "up", netns=name)
        return name

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        """A veth pair from ns_a/if_a to ns_b/if_b, both ends up."""
        ip("link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b, netns=ns_a)
        ip("link", "set", if_a, "up", netns=ns_a)
        ip("link", "set", if_b, "up", netns=ns_b)

    def close(self) -> None:
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.names.clear()

    def __enter__(self) -> Namespaces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
