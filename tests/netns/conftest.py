"""Root-only tests on the real kernel, each in network namespaces of its own.

`netns_factory` makes uniquely named namespaces (lo up) and removes them,
and kills every process registered with it, at teardown, also on failure.
`netns_factory.enter(name)` moves the calling thread into a namespace for
the duration of a with block, so sockets opened there live in it;
`netns_factory.ip(...)` runs iproute2 and raises with its stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator

import pytest

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root for network namespaces")
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def enter_netns(name: str) -> Iterator[None]:
    """Run the with block (this thread only) inside namespace `name`."""
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


def ip(*args: str, netns: str | None = None, stdin: str | None = None) -> str:
    """Run `ip` (optionally `ip -n netns`), raising with its stderr on failure."""
    cmd = ["ip"] + (["-n", netns] if netns else []) + list(args)
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


class NetnsFactory:
    def __init__(self) -> None:
        self.created: list[str] = []
        self.processes: list[subprocess.Popen | int] = []

    def __call__(self, prefix: str = "dpt") -> str:
        name = f"{prefix}-{secrets.token_hex(4)}"
        ip("netns", "add", name)
        self.created.append(name)
        ip("link", "set", "lo", "up", netns=name)
        return name

    def register(self, process: subprocess.Popen | int) -> None:
        """Kill this process (a Popen or a PID) at teardown."""
        self.processes.append(process)

    enter = staticmethod(enter_netns)
    ip = staticmethod(ip)

    def cleanup(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError, OSError):
                if isinstance(process, int):
                    os.kill(process, signal.SIGKILL)
                else:
                    process.kill()
                    process.wait(timeout=5)
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def netns_factory() -> Iterator[NetnsFactory]:
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()
