"""Root-only tests on the real kernel, each in network namespaces of its own.

Both fixtures stand on agent.netns.Namespaces, the one namespace manager:

`netns_factory(prefix)` makes a uniquely named namespace (lo up) and returns its
name; `.register(process)` has a Popen or a PID killed at teardown;
`.enter(name)` moves the calling thread into a namespace for the duration of a
with block, so sockets opened there live in it; `.ip(...)` runs iproute2 and
raises with its stderr. Every namespace and process goes at teardown, also on
failure.

`lab` is the two-node lab (agent.lab.Lab), removed at teardown; options for it
come from a marker, e.g. `@pytest.mark.lab(heartbeat="switched")`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from agent.lab import Lab
from agent.netns import Namespaces, enter, ip
from rootonly import skip_without_root


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab(**options): keyword arguments for the `lab` fixture's Lab")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_without_root(items, os.path.dirname(__file__), "needs root for network namespaces")


class NetnsFactory:
    """The tests' call API over one Namespaces."""

    def __init__(self) -> None:
        self.spaces = Namespaces(prefix="")

    def __call__(self, prefix: str = "dpt") -> str:
        return self.spaces.new(prefix)

    def register(self, process: subprocess.Popen | int) -> None:
        """Kill this process (a Popen or a PID) at teardown."""
        self.spaces.register(process)

    enter = staticmethod(enter)
    ip = staticmethod(ip)

    def cleanup(self) -> None:
        self.spaces.close()


@pytest.fixture
def netns_factory() -> Iterator[NetnsFactory]:
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    marker = request.node.get_closest_marker("lab")
    with Lab(**(marker.kwargs if marker else {})) as built:
        yield built
