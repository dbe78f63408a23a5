"""The heartbeat epoch: larger at every start, even when the clock went backwards.

Peers drop frames of an epoch older than the newest they saw as replays, so a
node that boots with its clock behind (no RTC, NTP not synced yet) would go
unheard, resign frames included, and grab the blocks a live master holds. The
epoch is therefore max(wall clock, last epoch + 1), written before the first
frame goes out.

A last epoch that cannot be used is replaced by the clock's, not kept: one that
does not parse, is negative, leaves no u64 for the next, or is
EPOCH_TOLERANCE_NS or more ahead of the clock. Peers refuse such a future epoch
(wire.epoch_limit), so keeping it would leave this node unheard until the clock
caught up, and since they never accepted it, starting over from the clock does
not look like a replay to them. The same tolerance therefore bounds how far
behind the clock may be at start for the first paragraph to hold: start the
agent once the clock is set (systemd's time-sync.target).
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.core.wire import EPOCH_TOLERANCE_NS

_LAST_EPOCH = 2**64 - 1  # the largest a frame carries; a last epoch here leaves no next one


def next_epoch(state_dir: Path, now_ns: int) -> tuple[int, str | None]:
    """The epoch for this run, and a problem to report if the last one was lost or
    this one could not be kept."""
    path = state_dir / "epoch"
    last, read_problem = _last_epoch(path, now_ns)
    epoch = max(now_ns, last + 1)
    write_problem = _keep(path, epoch)
    return epoch, "; ".join(p for p in (read_problem, write_problem) if p) or None


def _last_epoch(path: Path, now_ns: int) -> tuple[int, str | None]:
    """The epoch of the last run, or 0 with the reason it cannot be used."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return 0, None
    except OSError as exc:
        return 0, _replaced(path, f"cannot read it: {exc.strerror or exc}")
    try:
        last = int(raw)
    except ValueError:
        return 0, _replaced(path, f"not an integer: {raw[:40]!r}")
    why = _out_of_range(last, now_ns)
    return (0, _replaced(path, why)) if why else (last, None)


def _replaced(path: Path, why: str) -> str:
    return f"unusable epoch in {path} ({why}), replaced with the clock's"


def _out_of_range(last: int, now_ns: int) -> str | None:
    if last < 0:
        return "negative"
    if last >= _LAST_EPOCH:
        return "no u64 left for the next epoch"
    if last >= now_ns + EPOCH_TOLERANCE_NS:
        return f"{(last - now_ns) / 1e9:.0f} s ahead of the clock"
    return None


def _keep(path: Path, epoch: int) -> str | None:
    """Write the epoch atomically and durably (temp file, fsync, rename, fsync of the
    directory), so a crash leaves either the old epoch or this one."""
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        with open(tmp, "w") as fh:
            fh.write(f"{epoch}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return f"cannot keep the epoch in {path}: {exc.strerror or exc}"
    return None
