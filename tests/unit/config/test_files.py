"""agent.config.files: reading is bounded, so a huge file named by mistake costs no more than the cap."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from agent.config.files import read_text
from agent.config.schema import MAX_FILE_BYTES
from config_documents import minimal, one_error


def test_a_file_over_the_cap_is_refused_without_being_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "huge"
    with path.open("wb") as f:
        f.truncate(16 * MAX_FILE_BYTES)  # sparse: no disk is used
    tracemalloc.start()
    try:
        with pytest.raises(OSError, match="larger than 16 MiB"):
            read_text(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * MAX_FILE_BYTES


def test_a_file_of_exactly_the_cap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "full"
    path.write_bytes(b"#" * (MAX_FILE_BYTES - 1) + b"\n")
    assert len(read_text(path)[1]) == MAX_FILE_BYTES


def test_an_address_file_over_the_cap_is_an_error_naming_it_and_the_cap(workdir: Path) -> None:
    with (workdir / "big.addr").open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    document = minimal()
    document["block"][0]["address_files"] = ["big.addr"]
    assert one_error(workdir, document) == (
        'DIR/dpagent.toml: block[0].address_files[0] = "big.addr": cannot read: larger than 16 MiB,'
        " the most read from one file")
