"""`make deb`: what the package holds, and what installing it does, in a temporary root (dpkg --root).

The installed commands run from that root (their launcher finds ../lib/dpagent from its own
place), with the host's Debian python3 and its python3-nftables, python3-prometheus-client and
python3-cffi-backend, which is what the package's Depends ask for."""

from __future__ import annotations

import gzip
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from agent.config import load_keys
from dpkgroot import dpkg

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
EM_BPF = 247


def control(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True, check=True).stdout.strip()


def owner(path: Path, root: Path) -> tuple[str, str, int]:
    """(user, group, mode) of a file, the names as the root's own passwd and group give them."""
    names = {int(line.split(":")[2]): line.split(":")[0] for line in (root / "etc/passwd").read_text().splitlines()}
    groups = {int(line.split(":")[2]): line.split(":")[0] for line in (root / "etc/group").read_text().splitlines()}
    info = path.stat()
    return names[info.st_uid], groups[info.st_gid], stat.S_IMODE(info.st_mode)


def test_the_package_declares_debian_s_modules_and_holds_no_key(deb):
    depends = control(deb, "Depends")
    for needed in ("python3-nftables", "python3-prometheus-client", "python3-cffi-backend", "libbpf1", "systemd"):
        assert needed in depends
    assert "python3-pyroute2" not in depends and "python3-uvloop" not in depends  # vendored
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    assert all(" root/root " in line for line in listing.splitlines())
    paths = {line.split()[-1].removeprefix(".") for line in listing.splitlines()}
    assert "/etc/dpagent/key" not in paths
    assert {"/usr/bin/dpagent", "/usr/bin/agentctl", "/lib/systemd/system/dpagent.service",
            "/usr/lib/sysusers.d/dpagent.conf", "/usr/share/man/man8/dpagent.8.gz",
            "/usr/share/man/man8/agentctl.8.gz", "/usr/lib/dpagent/agent/_native/xdp_filter.bpf.o"} <= paths
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True).stdout
    assert b"conffiles" in conffiles


def test_install_creates_the_user_and_a_private_key_and_runs_from_the_installed_tree(installed, tmp_path):
    root = tmp_path / "root"
    done = installed(root)
    assert "generated /etc/dpagent/key" in done.stdout and "systemctl enable --now dpagent" in done.stdout
    passwd = (root / "etc/passwd").read_text()
    assert "dpagent:" in passwd and passwd.split("dpagent:")[1].splitlines()[0].endswith(":/usr/sbin/nologin")

    etc = root / "etc/dpagent"
    assert owner(etc, root) == ("root", "dpagent", 0o750)
    assert owner(etc / "dpagent.toml", root) == ("root", "dpagent", 0o640)
    assert owner(etc / "key", root) == ("dpagent", "dpagent", 0o600)
    ((key_id, secret),) = load_keys(etc / "key")
    assert key_id == 1 and len(secret) == 32
    for path, mode in (("usr/bin/dpagent", 0o755), ("usr/bin/agentctl", 0o755),
                       ("lib/systemd/system/dpagent.service", 0o644), ("usr/lib/sysusers.d/dpagent.conf", 0o644)):
        assert owner(root / path, root) == ("root", "root", mode), path
    assert (root / "etc/dpagent/dpagent.toml").read_text() == (PACKAGING / "dpagent.toml").read_text()
    assert (root / "lib/systemd/system/dpagent.service").read_text() == (PACKAGING / "dpagent.service").read_text()

    # The example does not pass the unit's ExecStartPre: the agent waits until it is configured.
    example = subprocess.run([str(root / "usr/bin/dpagent"), "check", str(etc / "dpagent.toml")],
                             capture_output=True, text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert example.returncode == 2 and "address_files[0]" in example.stderr
    config = tmp_path / "dpagent.toml"
    config.write_text(f"""[node]\nid = 1\n[auth]\nkey_file = "{etc / 'key'}"\n[[heartbeat]]\ninterface = "hb0"
group = "224.0.0.18"\n[[block]]\nname = "ext"\ninterface = "ext0"\nprefixes = ["198.18.0.0/16"]\n""")
    checked = subprocess.run([str(root / "usr/bin/dpagent"), "check", str(config)], capture_output=True, text=True,
                             cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert checked.returncode == 0, checked.stderr
    assert "ok: node 1, 1 heartbeat link(s), 1 block(s), 65536 addresses" in checked.stdout
    unreachable = subprocess.run([str(root / "usr/bin/agentctl"), "-s", str(tmp_path / "none.sock"), "status"],
                                 capture_output=True, text=True)
    assert unreachable.returncode == 3

    # Where each module came from: ours and the vendored ones from the root, the rest from Debian.
    lib = root / "usr/lib/dpagent"
    where = subprocess.run(["/usr/bin/python3", "-I", "-c", f"""
import sys; sys.path[:0] = ["{lib}", "{lib / 'vendor'}"]
import agent, agent._native._garp, agent._native._xdp, pyroute2, uvloop, nftables, prometheus_client, _cffi_backend
from importlib.metadata import version
for m in (agent, agent._native._garp, agent._native._xdp, pyroute2, uvloop, nftables, prometheus_client, _cffi_backend):
    print(m.__name__, m.__file__)
print("version", version("dpagent"), hasattr(uvloop, "run"))
"""], capture_output=True, text=True, check=True).stdout
    found = dict(line.split(" ", 1) for line in where.splitlines())
    for name in ("agent", "agent._native._garp", "agent._native._xdp", "pyroute2", "uvloop"):
        assert found[name].startswith(str(lib)), (name, found[name])
    for name in ("nftables", "prometheus_client", "_cffi_backend"):
        assert found[name].startswith("/usr/lib/python3/dist-packages/"), (name, found[name])
    assert found["version"] == "0.1.0 True"
    bpf = (lib / "agent/_native/xdp_filter.bpf.o").read_bytes()
    assert bpf[:4] == b"\x7fELF" and int.from_bytes(bpf[18:20], "little") == EM_BPF

    # The man pages are agentctl's and dpagent's own help, in roff that man formats.
    for name in ("dpagent", "agentctl"):
        page = gzip.decompress((root / f"usr/share/man/man8/{name}.8.gz").read_bytes()).decode()
        assert page.startswith(f".TH {name.upper()} 8") and ".SH EXIT STATUS" in page
    assert "status \\-\\-watch" in gzip.decompress((root / "usr/share/man/man8/agentctl.8.gz").read_bytes()).decode()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_installed_unit_with_the_installed_command(installed, tmp_path):
    root = tmp_path / "root"
    installed(root)
    # Its commands pointed at the installed launcher, since /usr/bin/dpagent is not the host's.
    unit = tmp_path / "dpagent.service"
    unit.write_text((root / "lib/systemd/system/dpagent.service").read_text()
                    .replace("/usr/bin/dpagent ", f"{root}/usr/bin/dpagent "))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode == 0 and "dpagent.service" not in done.stderr, done.stderr


def test_a_reinstall_keeps_the_edited_configuration_and_the_key_and_a_purge_removes_them(installed, tmp_path):
    root = tmp_path / "root"
    installed(root)
    etc = root / "etc/dpagent"
    key = (etc / "key").read_text()
    (etc / "dpagent.toml").write_text("# edited by the operator\n")
    again = installed(root)
    assert "generated" not in again.stdout
    assert (etc / "key").read_text() == key
    assert (etc / "dpagent.toml").read_text() == "# edited by the operator\n"
    assert owner(etc / "dpagent.toml", root)[1] == "dpagent"
    purged = dpkg(root, "--purge", "dpagent")
    assert purged.returncode == 0, purged.stderr
    assert not etc.exists() and not (root / "usr/lib/dpagent").exists() and not (root / "usr/bin/dpagent").exists()
    assert "dpagent:" in (root / "etc/passwd").read_text()  # system users stay
