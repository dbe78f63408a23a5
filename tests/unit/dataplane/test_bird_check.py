"""agent.dataplane.bird against a fake BIRD control socket: every failure is a problem, never a raise."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from agent.dataplane import bird

HELLO = b"0001 BIRD 2.0.12 ready.\n"
PROTOCOLS = (b"2002-Name       Proto      Table      State  Since         Info\n"
             b"1002-dpagent4   Kernel     master4    up     03:59:07.790  \n"
             b"1006-  Channel ipv4\n     Routes:         1 imported, 0 exported, 1 preferred\n"
             b"1002-dpagent6   Kernel     master6    up     03:59:07.790  \n"
             b"0000 \n")


def fake_bird(path: Path, hello: bytes, answer: bytes | None) -> threading.Thread:
    """Serve one connection: the greeting, then `answer` to the first command (None: say nothing)."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn, server:
            conn.sendall(hello)
            if conn.recv(1024) != b"show protocols all\n":
                return  # the client gave up on the greeting
            if answer is None:
                conn.recv(1024)  # until the client gives up
                return
            conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_bird_up_with_both_protocols(tmp_path: Path):
    fake_bird(tmp_path / "bird.ctl", HELLO, PROTOCOLS)
    found = bird.check(tmp_path / "bird.ctl", ("dpagent4", "dpagent6"))
    assert found["running"] and found["version"] == "2.0.12" and found["problem"] is None
    assert found["protocols"]["dpagent4"]["imported"] == 1


def test_a_protocol_missing(tmp_path: Path):
    fake_bird(tmp_path / "bird.ctl", HELLO, PROTOCOLS)
    found = bird.check(tmp_path / "bird.ctl", ("dpagent4", "k199"))
    assert found["running"] and found["problem"] == "no protocol k199"


def test_no_socket(tmp_path: Path):
    found = bird.check(tmp_path / "none.ctl", ("dpagent4",))
    assert not found["running"]
    assert found["problem"] == f"no control socket at {tmp_path / 'none.ctl'}: is BIRD running?"


def test_a_stale_socket_file(tmp_path: Path):
    path = tmp_path / "bird.ctl"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    assert bird.check(path, ("dpagent4",))["problem"] == f"nothing listens on {path}: BIRD is not running"


def test_a_hung_bird_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(bird, "TIMEOUT", 0.2)
    fake_bird(tmp_path / "bird.ctl", HELLO, None)
    found = bird.check(tmp_path / "bird.ctl", ("dpagent4",))
    assert "did not answer" in found["problem"]


@pytest.mark.parametrize("hello, answer, expected", [
    (b"HTTP/1.1 400 Bad Request\r\n", b"", "is not its control protocol: not a reply line"),
    (HELLO, b"", "BIRD closed the control connection"),
    (HELLO, b"8007 Access denied\n", "BIRD refused `show protocols all`: Access denied"),
])
def test_what_is_not_bird(tmp_path: Path, hello: bytes, answer: bytes, expected: str):
    fake_bird(tmp_path / "bird.ctl", hello, answer)
    assert expected in bird.check(tmp_path / "bird.ctl", ("dpagent4",))["problem"]
