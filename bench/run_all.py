"""Run every benchmark in bench/ in turn (`make bench`); `--quick` is passed through for smoke runs.
Exits non-zero if any benchmark failed, after running all of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
BENCHMARKS = ("addresses.py", "garp.py", "nft_scale.py", "xdp.py", "active.py", "failover.py", "conntrack.py", "ctsync.py", "bgp.py")


def main(argv: list[str]) -> int:
    passed = [arg for arg in argv if arg == "--quick"]
    failed = []
    for script in BENCHMARKS:
        print(f"# === {script} {' '.join(passed)}", flush=True)
        done = subprocess.run([sys.executable, str(BENCH / script), *passed])
        if done.returncode:
            failed.append(script)
    if failed:
        print(f"# failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
