"""Notifier against a real AF_UNIX datagram socket, as systemd's end of NOTIFY_SOCKET."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator

import pytest

from agent.runtime.notify import Notifier


@pytest.fixture
def manager(tmp_path) -> Iterator[tuple[str, socket.socket]]:
    """A bound path socket: (NOTIFY_SOCKET value, receiving socket)."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(2)
        yield path, sock


def fields(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_each_message_is_one_datagram_of_newline_separated_fields(manager):
    address, sock = manager
    notifier = Notifier({"NOTIFY_SOCKET": address})
    notifier.ready("MASTER: started")
    notifier.reloading()
    notifier.status("BACKUP: peer has higher priority")
    notifier.watchdog()
    notifier.stopping()
    assert fields(sock) == ["READY=1", "STATUS=MASTER: started"]
    assert fields(sock) == ["RELOADING=1"]
    assert fields(sock) == ["STATUS=BACKUP: peer has higher priority"]
    assert fields(sock) == ["WATCHDOG=1"]
    assert fields(sock) == ["STOPPING=1"]


def test_an_at_sign_means_the_abstract_namespace():
    name = f"dpagent-test-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready("up")
        assert fields(sock) == ["READY=1", "STATUS=up"]


def test_watchdog_interval_is_half_of_watchdog_usec(manager):
    address, _sock = manager
    notifier = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"})
    assert notifier.watchdog_interval == pytest.approx(1.0)


def test_watchdog_pid_of_this_process_keeps_the_watchdog(manager):
    address, _sock = manager
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(env).watchdog_interval == pytest.approx(0.1)


def test_watchdog_pid_of_another_process_disables_the_watchdog(manager):
    """systemd watches the main PID only; a child that inherited the variables must not ping."""
    address, _sock = manager
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(env).watchdog_interval is None


@pytest.mark.parametrize("usec", ["", "0", "-5", "2s"])
def test_no_usable_watchdog_usec_means_no_watchdog(manager, usec):
    address, _sock = manager
    assert Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": usec}).watchdog_interval is None


def test_without_notify_socket_every_call_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    notifier = Notifier()
    notifier.ready("started")
    notifier.reloading()
    notifier.status("x")
    notifier.watchdog()
    notifier.stopping()
    assert notifier.watchdog_interval is None


def test_a_vanished_manager_socket_does_not_stop_the_agent(tmp_path):
    """systemd may be re-executing; a lost notification must never raise into the daemon."""
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    notifier.ready("started")
    notifier.watchdog()
