"""packaging/install.sh, staged below a temporary DESTDIR (it never touches this machine)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_keys

PACKAGING = Path(__file__).parents[3] / "packaging"


def install(destdir: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PACKAGING / "install.sh")], env={**os.environ, "DESTDIR": str(destdir), **env},
                          capture_output=True, text=True, check=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_fresh_install_stages_unit_config_and_a_private_key(tmp_path):
    done = install(tmp_path)
    unit = tmp_path / "lib/systemd/system/dpagent.service"
    assert unit.read_text() == (PACKAGING / "dpagent.service").read_text()
    assert mode(unit) == 0o644
    assert "u dpagent " in (tmp_path / "usr/lib/sysusers.d/dpagent.conf").read_text()
    etc = tmp_path / "etc/dpagent"
    assert mode(etc) == 0o750
    assert (etc / "dpagent.toml").read_text() == (PACKAGING / "dpagent.toml").read_text()
    assert mode(etc / "dpagent.toml") == 0o640
    assert mode(etc / "key") == 0o600
    # The agent's own loader accepts it: one key, id 1, 32 random bytes.
    ((key_id, secret),) = load_keys(etc / "key")
    assert key_id == 1 and len(secret) == 32
    assert "copy it to the other node" in done.stdout


def test_a_second_run_keeps_the_configuration_and_the_key(tmp_path):
    install(tmp_path)
    etc = tmp_path / "etc/dpagent"
    (etc / "dpagent.toml").write_text("# edited by the operator\n")
    key = (etc / "key").read_text()
    done = install(tmp_path)
    assert (etc / "dpagent.toml").read_text() == "# edited by the operator\n"
    assert (etc / "key").read_text() == key
    assert "generated" not in done.stdout


def test_two_installs_generate_different_keys(tmp_path):
    install(tmp_path / "a")
    install(tmp_path / "b")
    assert (tmp_path / "a/etc/dpagent/key").read_text() != (tmp_path / "b/etc/dpagent/key").read_text()


def test_bindir_moves_every_command_of_the_unit(tmp_path):
    install(tmp_path, BINDIR="/opt/dpagent/bin")
    unit = (tmp_path / "lib/systemd/system/dpagent.service").read_text()
    commands = [line for line in unit.splitlines() if line.startswith(("ExecStartPre=", "ExecStart="))]
    assert commands == [
        "ExecStartPre=/opt/dpagent/bin/dpagent -c /etc/dpagent/dpagent.toml check",
        "ExecStart=/opt/dpagent/bin/dpagent -c /etc/dpagent/dpagent.toml",
    ]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_installed_unit(tmp_path):
    """`systemd-analyze verify` checks every directive and that the commands exist."""
    dpagent = shutil.which("dpagent") or str(Path(sys.executable).parent / "dpagent")
    if not os.access(dpagent, os.X_OK):
        pytest.skip("the dpagent command is not installed")
    install(tmp_path, BINDIR=str(Path(dpagent).parent))
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "lib/systemd/system/dpagent.service")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "dpagent.service" not in done.stderr
