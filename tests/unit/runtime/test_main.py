"""`dpagent check` and `dpagent -c`: one line per configuration error, exit status 2, in both."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PYTHON_MODULE = [sys.executable, "-m", "agent.runtime.main"]
SCRIPT = [str(Path(sys.executable).parent / "dpagent")]
REFUSAL = "dpagent: refusing to start with an invalid configuration"

GOOD = """\
[node]
id = 1
priority = 150

[auth]
key_file = "key"

[control]
socket = "control.sock"

[[heartbeat]]
interface = "hb0"
group = "239.255.77.77"

[[block]]
name = "ext"
interface = "ext0"
prefixes = ["198.18.0.0/16"]
addresses = ["203.0.113.7"]
"""

# Every error that one file can hold at once, each reported with its key path and value.
BAD = """\
[node]
id = 0
priorty = 150
advert_interval = nan

[auth]
key_file = "key"

[[heartbeat]]
interface = "hb0/x"
group = "10.0.0.1"

[[block]]
name = "ext"
interface = "ext0"
prefixes = ["198.18.0.1/16", "2001:db8::/64"]
addresses = ["203.0.113.7", "line\\nbreak"]
"""
BAD_LINES = [
    'node.priorty = 150: unknown key (did you mean "priority"?)',
    "node.id = 0: must be an integer from 1 to 4294967295",
    "node.advert_interval = nan: must be a number from 0.01 to 10",
    "heartbeat[0].interface = \"hb0/x\": must be a Linux interface name (1 to 15 bytes, no '/', ':' or spaces)",
    'heartbeat[0].group = "10.0.0.1": must be a multicast address',
    'block[0].prefixes[0] = "198.18.0.1/16": has host bits set (did you mean 198.18.0.0/16?)',
    'block[0].prefixes[1] = "2001:db8::/64": an IPv6 prefix must be /116 or longer (at most 4,096 addresses)',
    'block[0].addresses[1] = "line\\u000abreak": not an IP address',
]


@pytest.fixture
def configs(tmp_path: Path) -> Path:
    key = tmp_path / "key"
    key.write_text("1 00112233445566778899aabbccddeeff\n")
    key.chmod(0o600)
    (tmp_path / "good.toml").write_text(GOOD)
    (tmp_path / "bad.toml").write_text(BAD)
    return tmp_path


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", [PYTHON_MODULE, SCRIPT], ids=["module", "script"])
def test_check_good_config_prints_one_ok_line(configs, command):
    path = configs / "good.toml"
    done = run([*command, "check", str(path)])
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"{path}: ok: node 1, 1 heartbeat link(s), 1 block(s), 65537 addresses\n"


@pytest.mark.parametrize("command", [PYTHON_MODULE, SCRIPT], ids=["module", "script"])
def test_check_bad_config_lists_every_error_and_exits_2(configs, command):
    path = configs / "bad.toml"
    done = run([*command, "check", str(path)])
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [f"{path}: {line}" for line in BAD_LINES]


@pytest.mark.parametrize("command", [PYTHON_MODULE, SCRIPT], ids=["module", "script"])
def test_daemon_refuses_a_bad_config_with_the_same_lines(configs, command):
    path = configs / "bad.toml"
    done = run([*command, "-c", str(path)])
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [f"{path}: {line}" for line in BAD_LINES] + [REFUSAL]
    assert not (configs / "control.sock").exists()


def test_check_takes_the_path_from_c_too(configs):
    path = configs / "bad.toml"
    done = run([*SCRIPT, "-c", str(path), "check"])
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"{path}: {line}" for line in BAD_LINES]


@pytest.mark.parametrize("name, content, mode, lines", [
    ("missing.toml", None, None, ["cannot read: No such file or directory"]),
    ("syntax.toml", "[node\nid = 1\n", None, ["Expected ']' at the end of a table declaration (at line 1, column 6)"]),
    ("empty.toml", "", None, [
        "node.id: is required",
        "auth.key_file: is required",
        "heartbeat: at least one [[heartbeat]] link is required",
        "block: at least one [[block]] is required",
    ]),
    ("open-key.toml", GOOD, 0o644, [
        'auth.key_file = "{dir}/key": is world-readable (mode 0644): chmod 600 it',
    ]),
])
def test_check_reports_unreadable_and_incomplete_files(configs, name, content, mode, lines):
    path = configs / name
    if content is not None:
        path.write_text(content)
    if mode is not None:
        (configs / "key").chmod(mode)
    for argv in (["check", str(path)], ["-c", str(path)]):
        done = run([*SCRIPT, *argv])
        expected = [f"{path}: {line.format(dir=configs)}" for line in lines]
        if argv[0] == "-c":
            expected.append(REFUSAL)
        assert (done.returncode, done.stderr.splitlines()) == (2, expected)


def test_check_deeply_nested_toml_is_an_error_not_a_traceback(configs):
    path = configs / "deep.toml"
    path.write_text("a = " + "[" * 3000 + "]" * 3000 + "\n")
    done = run([*SCRIPT, "check", str(path)])
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"{path}: ")
