"""agent.runtime.control: hostile request lines get an error reply and a count, never a dead daemon."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop

from agent.runtime import control
from agent.runtime.control import MAX_REQUEST, ControlError, ControlServer, parse_request


def _refuse(_args: dict) -> dict:
    raise ControlError("not master (state BACKUP); nothing to hand over")


def _buggy(args: dict) -> dict:
    return {"mode": args["mode"]}  # KeyError when the client leaves mode out


def make_server(path: str = "unused") -> ControlServer:
    return ControlServer(path, {
        "status": lambda _args: {"state": "MASTER"},
        "echo": lambda args: {"args": args},
        "failover": _refuse,
        "buggy": _buggy,
    })


# --- parse_request ---------------------------------------------------------------


@pytest.mark.parametrize("line, message", [
    (b"hello\n", "request is not JSON: Expecting value: line 1 column 1 (char 0)"),
    (b"", "request is not JSON: Expecting value: line 1 column 1 (char 0)"),
    (b'{"command": "status"\n', "request is not JSON: Expecting ',' delimiter: line 2 column 1 (char 21)"),
    (b"\x00\xff\x10\x80\n", "request is not JSON: 'utf-16-be' codec can't decode byte 0x0a in position 4: truncated data"),
    (b"\xc3\x28\n", "request is not JSON: 'utf-8' codec can't decode byte 0xc3 in position 0: invalid continuation byte"),
    (b"[" * (MAX_REQUEST - 1) + b"\n", "request is not JSON: nested too deeply"),
    (b'{"a": ' * 2000 + b"1" + b"}" * 2000 + b"\n", "request is not JSON: nested too deeply"),
    (b'["status"]\n', "request must be a JSON object"),
    (b'"status"\n', "request must be a JSON object"),
    (b"null\n", "request must be a JSON object"),
    (b"{}\n", "request.command must be a string"),
    (b'{"command": 1}\n', "request.command must be a string"),
    (b'{"command": ["status"]}\n', "request.command must be a string"),
    (b'{"command": "status", "args": []}\n', "request.args must be an object"),
    (b'{"command": "status", "args": "mode=on"}\n', "request.args must be an object"),
    (b'{"command": "status", "args": null}\n', "request.args must be an object"),
])
def test_parse_request_refuses_with_the_reason(line, message):
    with pytest.raises(ControlError) as caught:
        parse_request(line)
    assert str(caught.value) == message


def test_parse_request_accepts_a_request_with_and_without_args():
    assert parse_request(b'{"command": "status"}\n') == ("status", {})
    assert parse_request(b'{"command": "maintenance", "args": {"mode": "on"}}\n') == ("maintenance", {"mode": "on"})


# --- dispatch ----------------------------------------------------------------------


def test_dispatch_answers_every_hostile_line_and_counts_it():
    server = make_server()
    lines = [b"\x00\x01\x02\n", b"[]\n", b'{"command": "reboot"}\n', b'{"command": "echo", "args": 3}\n',
             b"[" * 3000 + b"\n"]
    replies = [asyncio.run(server.dispatch(line)) for line in lines]
    assert [r["ok"] for r in replies] == [False] * len(lines)
    assert replies[2]["error"] == "unknown command 'reboot'; known: buggy, echo, failover, status"
    assert server.errors == {"bad_request": len(lines)}
    assert asyncio.run(server.dispatch(b'{"command": "status"}\n')) == {"ok": True, "state": "MASTER"}
    assert server.requests == len(lines) + 1


def test_dispatch_passes_a_refusal_through():
    server = make_server()
    assert asyncio.run(server.dispatch(b'{"command": "failover"}\n')) == {
        "ok": False, "error": "not master (state BACKUP); nothing to hand over"}
    assert server.errors == {"bad_request": 1}


def test_dispatch_survives_a_handler_bug():
    server = make_server()
    reply = asyncio.run(server.dispatch(b'{"command": "buggy", "args": {}}\n'))
    assert reply == {"ok": False, "error": "internal error: KeyError('mode')"}
    assert server.errors == {"internal": 1}
    assert asyncio.run(server.dispatch(b'{"command": "buggy", "args": {"mode": "on"}}\n')) == {"ok": True, "mode": "on"}


# --- the socket ---------------------------------------------------------------------


def run_with_server(tmp_path: Path, body: Callable[[ControlServer, str], Awaitable[None]]) -> ControlServer:
    path = str(tmp_path / "run" / "control.sock")
    server = make_server(path)

    async def main() -> None:
        await server.start()
        try:
            await body(server, path)
        finally:
            await server.close()

    uvloop.run(main())
    return server


async def exchange(path: str, data: bytes) -> bytes:
    """Send `data`, end our side, read the reply until the server closes."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(data)
    writer.write_eof()
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return reply


async def counted(server: ControlServer, reason: str, count: int) -> None:
    """Wait until the server has counted `count` errors of `reason` (it counts after we hang up)."""
    async with asyncio.timeout(5):
        while server.errors[reason] < count:
            await asyncio.sleep(0.01)


async def status_answers(path: str) -> None:
    assert await exchange(path, b'{"command": "status"}\n') == b'{"ok": true, "state": "MASTER"}\n'


def test_socket_is_private(tmp_path):
    async def body(_server: ControlServer, path: str) -> None:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    run_with_server(tmp_path, body)
    assert not (tmp_path / "run" / "control.sock").exists()


def test_garbage_lines_get_error_replies(tmp_path):
    async def body(server: ControlServer, path: str) -> None:
        assert await exchange(path, b"\x89PNG\r\n") == (
            b'{"ok": false, "error": "request is not JSON: \'utf-8\' codec can\'t decode byte 0x89 '
            b'in position 0: invalid start byte"}\n')
        assert await exchange(path, b'["status"]\n') == b'{"ok": false, "error": "request must be a JSON object"}\n'
        assert await exchange(path, b"[" * 4000 + b"\n") == (
            b'{"ok": false, "error": "request is not JSON: nested too deeply"}\n')
        assert await exchange(path, b'{"command": "buggy"}\n') == (
            b'{"ok": false, "error": "internal error: KeyError(\'mode\')"}\n')
        await status_answers(path)

    server = run_with_server(tmp_path, body)
    assert server.errors == {"bad_request": 3, "internal": 1}


def test_a_line_longer_than_the_limit_is_refused(tmp_path):
    async def body(server: ControlServer, path: str) -> None:
        line = b'{"command": "echo", "args": {"pad": "' + b"x" * MAX_REQUEST + b'"}}\n'
        assert await exchange(path, line) == b'{"ok": false, "error": "request longer than 4096 bytes"}\n'
        # A flood without any newline: the server stops reading at the limit and hangs up.
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"y" * (1 << 20))
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(writer.drain(), 5)
        writer.close()
        await counted(server, "oversized", 2)
        await status_answers(path)

    server = run_with_server(tmp_path, body)
    assert server.errors == {"oversized": 2}


def test_a_silent_client_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr(control, "REQUEST_TIMEOUT", 0.2)

    async def body(server: ControlServer, path: str) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b'{"command": "sta')  # ... and never the rest
        reply = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert reply == b'{"ok": false, "error": "no request line within 0.2 s"}\n'
        await status_answers(path)

    server = run_with_server(tmp_path, body)
    assert server.errors == {"timeout": 1}


def test_a_client_that_leaves_mid_request_is_counted_once(tmp_path):
    async def body(server: ControlServer, path: str) -> None:
        for partial in (b"", b'{"command": "fail', b'{"command": "failover"}'):
            _reader, writer = await asyncio.open_unix_connection(path)
            writer.write(partial)
            writer.close()
        await counted(server, "disconnected", 3)
        await status_answers(path)

    server = run_with_server(tmp_path, body)
    # None of the three reached a handler: a request is a whole line.
    assert server.errors == {"disconnected": 3}
    assert server.requests == 1


def test_dispatch_awaits_an_async_handler_and_passes_its_refusal():
    async def reload(args: dict) -> dict:
        await asyncio.sleep(0)
        if args.get("bad"):
            raise ControlError("reload refused: node changed; these need a restart")
        return {"message": "configuration reloaded"}

    server = ControlServer("unused", {"reload": reload})
    assert asyncio.run(server.dispatch(b'{"command": "reload"}\n')) == {"ok": True, "message": "configuration reloaded"}
    assert asyncio.run(server.dispatch(b'{"command": "reload", "args": {"bad": 1}}\n')) == {
        "ok": False, "error": "reload refused: node changed; these need a restart"}
