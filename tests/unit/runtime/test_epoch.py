"""The heartbeat epoch grows across restarts even when the clock goes backwards, and a
last epoch that cannot be used is reported and replaced, never kept or crashed on."""

import os
from pathlib import Path

import pytest

from agent.core.wire import EPOCH_TOLERANCE_NS
from agent.runtime import epoch as epoch_module
from agent.runtime.epoch import next_epoch

NOW = 1_700_000_000 * 10**9
U64_MAX = 2**64 - 1


def test_epoch_follows_the_clock_when_it_moves_forward(tmp_path: Path) -> None:
    assert next_epoch(tmp_path, 1_000) == (1_000, None)
    assert next_epoch(tmp_path, 5_000) == (5_000, None)
    assert (tmp_path / "epoch").read_text() == "5000\n"


def test_epoch_still_grows_after_a_restart_with_the_clock_behind(tmp_path: Path) -> None:
    next_epoch(tmp_path, 9_000)
    assert next_epoch(tmp_path, 1_000) == (9_001, None)
    assert next_epoch(tmp_path, 1_000) == (9_002, None)


def test_a_last_epoch_just_within_the_tolerance_ahead_is_kept(tmp_path: Path) -> None:
    (tmp_path / "epoch").write_text(f"{NOW + EPOCH_TOLERANCE_NS - 1}\n")
    assert next_epoch(tmp_path, NOW) == (NOW + EPOCH_TOLERANCE_NS, None)


def test_state_dir_is_created(tmp_path: Path) -> None:
    assert next_epoch(tmp_path / "a" / "b", 7) == (7, None)
    assert (tmp_path / "a" / "b" / "epoch").exists()


@pytest.mark.parametrize("content, why", [
    (b"garbage", "not an integer"),
    (b"", "not an integer"),
    (b"\xff\x00\x12", "not an integer"),
    (b"-5\n", "negative"),
    (f"{U64_MAX}\n".encode(), "no u64 left for the next epoch"),
    (f"{2**64 + 12345}\n".encode(), "no u64 left for the next epoch"),
    (f"{NOW + EPOCH_TOLERANCE_NS}\n".encode(), "600 s ahead of the clock"),
    (f"{NOW + 365 * 86_400 * 10**9}\n".encode(), "ahead of the clock"),
])
def test_an_unusable_epoch_is_reported_and_replaced_by_the_clock(
        tmp_path: Path, content: bytes, why: str) -> None:
    (tmp_path / "epoch").write_bytes(content)
    epoch, problem = next_epoch(tmp_path, NOW)
    assert epoch == NOW
    assert problem is not None
    assert problem.startswith(f"unusable epoch in {tmp_path / 'epoch'} (")
    assert why in problem
    # Rewritten, so the next start is clean and still grows from here.
    assert (tmp_path / "epoch").read_text() == f"{NOW}\n"
    assert next_epoch(tmp_path, NOW - 1) == (NOW + 1, None)


def test_a_last_epoch_that_leaves_no_u64_for_the_next_is_replaced(tmp_path: Path) -> None:
    """Even with the clock near the end of u64 time (year 2554), where it is not too far ahead."""
    (tmp_path / "epoch").write_text(f"{U64_MAX}\n")
    epoch, problem = next_epoch(tmp_path, U64_MAX - 10)
    assert epoch == U64_MAX - 10
    assert "no u64 left for the next epoch" in problem


def test_an_unreadable_epoch_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "epoch").mkdir()  # neither readable nor replaceable
    epoch, problem = next_epoch(tmp_path, 42)
    assert epoch == 42
    assert problem.startswith(f"unusable epoch in {tmp_path / 'epoch'} (cannot read it: ")
    assert f"; cannot keep the epoch in {tmp_path / 'epoch'}" in problem


def test_an_unwritable_state_dir_is_reported(tmp_path: Path) -> None:
    (tmp_path / "epoch.tmp").mkdir()  # where the new epoch is written first
    epoch, problem = next_epoch(tmp_path, 42)
    assert epoch == 42
    assert problem.startswith(f"cannot keep the epoch in {tmp_path / 'epoch'}")


def test_the_epoch_replaces_the_file_durably(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written to a temp file, synced, renamed over the old one, then the directory synced:
    a crash leaves the old epoch or the new one, never a torn or lost write."""
    path = tmp_path / "epoch"
    path.write_text("9000\n")
    os.link(path, tmp_path / "old")
    steps: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        steps.append("fsync dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        real_fsync(fd)

    def replace(src: Path, dst: Path) -> None:
        steps.append(f"rename {Path(src).name} {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(epoch_module.os, "fsync", fsync)
    monkeypatch.setattr(epoch_module.os, "replace", replace)
    assert next_epoch(tmp_path, 1_000) == (9_001, None)
    assert steps == ["fsync file", "rename epoch.tmp epoch", "fsync dir"]
    assert (tmp_path / "old").read_text() == "9000\n"  # the old inode was not written in place
    assert path.read_text() == "9001\n"
    assert not (tmp_path / "epoch.tmp").exists()
