"""The heartbeat epoch grows across restarts even when the clock goes backwards."""

from pathlib import Path

from agent.runtime.epoch import next_epoch


def test_epoch_follows_the_clock_when_it_moves_forward(tmp_path: Path) -> None:
    assert next_epoch(tmp_path, 1_000) == (1_000, None)
    assert next_epoch(tmp_path, 5_000) == (5_000, None)
    assert (tmp_path / "epoch").read_text() == "5000\n"


def test_epoch_still_grows_after_a_restart_with_the_clock_behind(tmp_path: Path) -> None:
    next_epoch(tmp_path, 9_000)
    assert next_epoch(tmp_path, 1_000) == (9_001, None)
    assert next_epoch(tmp_path, 1_000) == (9_002, None)


def test_state_dir_is_created(tmp_path: Path) -> None:
    assert next_epoch(tmp_path / "a" / "b", 7) == (7, None)
    assert (tmp_path / "a" / "b" / "epoch").exists()


def test_a_corrupt_epoch_file_is_reported_and_the_clock_used(tmp_path: Path) -> None:
    (tmp_path / "epoch").write_text("garbage")
    epoch, problem = next_epoch(tmp_path, 42)
    assert epoch == 42
    assert problem.startswith(f"cannot read {tmp_path / 'epoch'}")


def test_an_unwritable_state_dir_is_reported(tmp_path: Path) -> None:
    (tmp_path / "epoch.tmp").mkdir()  # where the new epoch is written first
    epoch, problem = next_epoch(tmp_path, 42)
    assert epoch == 42
    assert problem.startswith(f"cannot keep the epoch in {tmp_path / 'epoch'}")
