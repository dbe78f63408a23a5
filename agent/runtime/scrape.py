"""The Prometheus HTTP listener (`[metrics] listen`), in a thread of its own, off the event loop.

prometheus_client's WSGI app serves /metrics from a registry whose one
collector (agent.runtime.metrics) asks the event loop for the status
document: the loop computes it as it does for `agentctl status`, between two
of its callbacks, so a scrape never runs while the loop is in the middle of
something and never blocks it; everything else (HTTP, the text format) happens
in the listener's thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from agent.runtime.metrics import StatusCollector

log = logging.getLogger("dpagent")

# How long a scrape waits for the loop to hand over a status document.
STATUS_TIMEOUT = 2.0


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:
        """Scrapes are not worth a log line each."""


class _Server(WSGIServer):
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsListener:
    def __init__(self, loop: asyncio.AbstractEventLoop, status: Callable[[], dict], address: str, port: int) -> None:
        self._loop, self._status = loop, status
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StatusCollector(self._from_loop))
        server_class = _Server6 if ":" in address else _Server
        self._server = make_server(address, port, make_wsgi_app(registry), server_class, handler_class=_Quiet)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    def _from_loop(self) -> dict:
        async def status() -> dict:
            return self._status()
        return asyncio.run_coroutine_threadsafe(status(), self._loop).result(timeout=STATUS_TIMEOUT)

    def start(self) -> None:
        self._thread.start()
        log.warning("metrics on http://%s/metrics", "[%s]:%d" % self._server.server_address[:2]
                    if self._server.address_family == socket.AF_INET6 else "%s:%d" % self._server.server_address[:2])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
