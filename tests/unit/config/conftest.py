"""Fixtures of the agent.config tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from config_documents import SECRET


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    key = tmp_path / "key"
    key.write_text(f"1 {SECRET}\n")
    key.chmod(0o600)
    return tmp_path
