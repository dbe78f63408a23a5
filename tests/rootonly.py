"""Skip a folder's tests without root, cleanly: the one rule the root-only folders share."""

from __future__ import annotations

import os

import pytest


def skip_without_root(items: list[pytest.Item], folder: str, reason: str) -> None:
    """Mark every collected test under `folder` skipped, unless we are root."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if str(item.fspath).startswith(folder):
            item.add_marker(skip)
