"""Root-only tests on the real kernel, each in network namespaces of its own.

`netns_factory` makes uniquely named namespaces (lo up) and removes them,
and kills every process registered with it, at teardown, also on failure.
`netns_factory.enter(name)` moves the calling thread into a namespace for
the duration of a with block, so sockets opened there live in it;
`netns_factory.ip(...)` runs iproute2 and raises with its stderr.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator

import pytest

from agent.netns import enter, ip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root for network namespaces")
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)


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

    enter = staticmethod(enter)
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
