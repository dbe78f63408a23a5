"""The control socket: one JSON request line in, one JSON reply line out.

Anyone who can open the socket (mode 0600, root) can fail the node over, but the
bytes are still hostile: oversized, binary, slow or malformed requests get an
error reply naming the problem and are counted; none of them reaches the daemon.
Each connection counts at most one error, and every connection is closed by us,
whatever happened on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

MAX_REQUEST = 4096
REQUEST_TIMEOUT = 2.0

# verb -> handler(args) -> reply dict (without "ok"), or an awaitable of one
Handler = Callable[[dict], dict | Awaitable[dict]]

log = logging.getLogger("dpagent")


class ControlError(Exception):
    """A request the daemon refuses; the message goes back to the client."""


def parse_request(line: bytes) -> tuple[str, dict]:
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"request is not JSON: {exc}") from None
    except RecursionError:
        # "[[[[..." fits in MAX_REQUEST and is deeper than the decoder's recursion limit.
        raise ControlError("request is not JSON: nested too deeply") from None
    if not isinstance(request, dict):
        raise ControlError("request must be a JSON object")
    verb = request.get("command")
    if not isinstance(verb, str):
        raise ControlError("request.command must be a string")
    args = request.get("args", {})
    if not isinstance(args, dict):
        raise ControlError("request.args must be an object")
    return verb, args


def _answers(path: str) -> bool:
    """Whether a live server listens on `path` (a stale socket file refuses connections)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


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
        if _answers(self.path):
            raise ControlError(f"{self.path}: another dpagent is running and answers on it")
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

    async def dispatch(self, line: bytes) -> dict:
        self.requests += 1
        try:
            verb, args = parse_request(line)
            handler = self._handlers.get(verb)
            if handler is None:
                raise ControlError(f"unknown command {verb!r}; known: {', '.join(sorted(self._handlers))}")
            reply = handler(args)
            if inspect.isawaitable(reply):
                reply = await reply
            return {"ok": True, **reply}
        except ControlError as exc:
            self.errors["bad_request"] += 1
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            # A handler bug must still answer the client and leave the daemon running.
            log.exception("control request %r failed", line[:200])
            self.errors["internal"] += 1
            return {"ok": False, "error": f"internal error: {exc!r}"}

    async def _reply_to(self, reader: asyncio.StreamReader) -> dict | None:
        """The reply for the one request line on this connection; None if the client left."""
        try:
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
        except asyncio.TimeoutError:
            self.errors["timeout"] += 1
            return {"ok": False, "error": f"no request line within {REQUEST_TIMEOUT} s"}
        except ValueError:  # readline's form of LimitOverrunError
            self.errors["oversized"] += 1
            return {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"}
        if not line.endswith(b"\n"):
            # End of stream before the end of the line: nothing or half a request came.
            self.errors["disconnected"] += 1
            return None
        return await self.dispatch(line)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._reply_to(reader)
            if reply is not None:
                writer.write(json.dumps(reply, default=str).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            self.errors["disconnected"] += 1
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
