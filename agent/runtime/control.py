"""The control socket: one JSON request line in, one JSON reply line out.

Anyone who can open the socket (mode 0600, root) can fail the node over, but the
bytes are still hostile: oversized, binary, slow or malformed requests get an
error reply naming the problem and are counted; none of them reaches the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

MAX_REQUEST = 4096
REQUEST_TIMEOUT = 2.0

# verb -> handler(args) -> reply dict (without "ok")
Handler = Callable[[dict], dict]


class ControlError(Exception):
    """A request the daemon refuses; the message goes back to the client."""


def parse_request(line: bytes) -> tuple[str, dict]:
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"request is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise ControlError("request must be a JSON object")
    verb = request.get("command")
    if not isinstance(verb, str):
        raise ControlError("request.command must be a string")
    args = request.get("args", {})
    if not isinstance(args, dict):
        raise ControlError("request.args must be an object")
    return verb, args


class ControlServer:
    def __init__(self, path: str, handlers: dict[str, Handler]) -> None:
        self.path = path
        self._handlers = handlers
        self._server: asyncio.AbstractServer | None = None
        self.errors: Counter[str] = Counter()
        self.requests = 0

    async def start(self) -> None:
        socket_path = Path(self.path)
        socket_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=self.path, limit=MAX_REQUEST)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def dispatch(self, line: bytes) -> dict:
        self.requests += 1
        try:
            verb, args = parse_request(line)
            handler = self._handlers.get(verb)
            if handler is None:
                raise ControlError(f"unknown command {verb!r}; known: {', '.join(sorted(self._handlers))}")
            return {"ok": True, **handler(args)}
        except ControlError as exc:
            self.errors["bad_request"] += 1
            return {"ok": False, "error": str(exc)}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
            reply = self.dispatch(line)
        except asyncio.TimeoutError:
            self.errors["timeout"] += 1
            reply = {"ok": False, "error": f"no request line within {REQUEST_TIMEOUT} s"}
        except (asyncio.LimitOverrunError, ValueError):
            self.errors["oversized"] += 1
            reply = {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"}
        except ConnectionError:
            self.errors["disconnected"] += 1
            return
        try:
            writer.write(json.dumps(reply, default=str).encode() + b"\n")
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        except ConnectionError:
            self.errors["disconnected"] += 1
