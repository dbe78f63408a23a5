"""BPF_PROG_TEST_RUN tests of the production program: root (CAP_BPF), no namespaces."""

from __future__ import annotations

import os

import pytest

from rootonly import skip_without_root


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_without_root(items, os.path.dirname(__file__), "needs root to load BPF programs")
