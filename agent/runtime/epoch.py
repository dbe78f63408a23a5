"""The heartbeat epoch: larger at every start, even when the clock went backwards.

Peers drop frames of an epoch older than the newest they saw as replays, so a
node that boots with its clock behind (no RTC, NTP not synced yet) would go
unheard, resign frames included, and grab the blocks a live master holds. The
epoch is therefore max(wall clock, last epoch + 1), written before the first
frame goes out.
"""

from __future__ import annotations

import os
from pathlib import Path


def next_epoch(state_dir: Path, now_ns: int) -> tuple[int, str | None]:
    """The epoch for this run, and a problem to report if it could not be kept."""
    path = state_dir / "epoch"
    last = 0
    try:
        last = int(path.read_text().strip())
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        return now_ns, f"cannot read {path}: {exc}"
    epoch = max(now_ns, last + 1)
    tmp = path.with_suffix(".tmp")
    try:
        state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        with open(tmp, "w") as fh:
            fh.write(f"{epoch}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        return epoch, f"cannot keep the epoch in {path}: {exc.strerror or exc}"
    return epoch, None
