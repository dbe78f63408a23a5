"""Figures and results for benchmarks: one printed line per figure,
`name{label=value,...} value unit`, and the same figures with their settings as
JSON in bench/results/<bench>.json. A figure that is only a lower bound (the
measured system never finished within the bound) prints as `>= value`."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def git_commit() -> str | None:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def format_value(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


class Figures:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, name: str, labels: dict[str, str | int], value: float, unit: str, *,
            lower_bound: bool = False) -> None:
        row = {"name": name, "labels": labels, "value": value, "unit": unit}
        if lower_bound:
            row["lower_bound"] = True
        self.rows.append(row)
        text = ",".join(f"{k}={v}" for k, v in labels.items())
        shown = (">= " if lower_bound else "") + format_value(value)
        print(f"{name}{{{text}}} {shown} {unit}", flush=True)


def environment() -> dict:
    """The settings every result carries besides the benchmark's own."""
    return {"kernel": platform.release(), "commit": git_commit(), "cpus": len(os.sched_getaffinity(0))}


def write_result(path: Path, bench: str, settings: dict, figures: Figures, runs: object, **extra: object) -> None:
    result = {"bench": bench, "settings": {**settings, **environment()}, "figures": figures.rows,
              "runs": runs, **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
