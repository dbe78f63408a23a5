"""dpkg on a temporary root, with the maintainer scripts run outside a chroot against DPKG_ROOT:
the one way the package tests call dpkg (Depends are not installed in such a root)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def dpkg(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends",
                           "--log=/dev/null", *args], capture_output=True, text=True, timeout=120)
