"""agent.runtime.heartbeat: a flood on a heartbeat socket must not starve the event loop."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import ip_address

import uvloop

from agent.config import HeartbeatLink
from agent.runtime import heartbeat
from agent.runtime.heartbeat import HeartbeatPort

FLOOD_LIMIT = 100_000


def test_timers_run_while_a_flood_keeps_the_socket_readable(monkeypatch):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    monkeypatch.setattr(heartbeat, "_open_socket", lambda _link: rx)
    received = 0

    def on_datagram(_data: bytes, _link: str) -> None:
        # Every datagram read brings another: the queue never runs dry, as under a flood.
        nonlocal received
        received += 1
        if received < FLOOD_LIMIT:
            tx.sendto(b"garbage", rx.getsockname())

    async def main() -> int:
        loop = asyncio.get_running_loop()
        port = HeartbeatPort(HeartbeatLink("lo", None, (ip_address("127.0.0.1"),)), loop, on_datagram)
        assert port.open()
        for _ in range(8):
            tx.sendto(b"garbage", rx.getsockname())
        fired: asyncio.Future[int] = loop.create_future()
        loop.call_later(0.01, lambda: fired.set_result(received))
        try:
            return await fired
        finally:
            port.close()

    try:
        at_timer = uvloop.run(main())
    finally:
        tx.close()
    # An unbounded drain reads all FLOOD_LIMIT datagrams before the 10 ms timer gets its turn.
    assert 0 < at_timer < FLOOD_LIMIT
