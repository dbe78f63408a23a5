"""The Debian package, built once per session and installed with dpkg into temporary roots (root only).

`deb` is the path of the package `make deb` builds (packaging/build-deb.sh, into a temporary
directory); `installed(root)` installs it below `root` as dpkg --root does, with the maintainer
scripts run outside a chroot against DPKG_ROOT (--force-script-chrootless), since an empty root
has no shell to run them in. The root starts with a passwd and group that know only root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from dpkgroot import dpkg
from rootonly import skip_without_root

ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_without_root(items, os.path.dirname(__file__), "needs root for dpkg --root")


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("needs dpkg-deb")
    out = tmp_path_factory.mktemp("deb")
    done = subprocess.run([str(ROOT / "packaging" / "build-deb.sh")], env={**os.environ, "OUT": str(out)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


@pytest.fixture
def installed(deb: Path) -> Callable[[Path], subprocess.CompletedProcess]:
    def install(root: Path) -> subprocess.CompletedProcess:
        if not (root / "var/lib/dpkg/status").exists():
            for folder in ("etc", "var/lib/dpkg/updates", "var/lib/dpkg/info"):
                (root / folder).mkdir(parents=True, exist_ok=True)
            (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
            (root / "etc/group").write_text("root:x:0:\n")
            (root / "var/lib/dpkg/status").touch()
        done = dpkg(root, "-i", str(deb))
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    return install
