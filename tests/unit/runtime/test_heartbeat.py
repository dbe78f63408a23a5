"""agent.runtime.heartbeat: what a heartbeat port accepts, what it refuses, and how it comes back.

Real sockets on the loopback interface ("lo" plays the heartbeat link), no namespace:
the hostile senders and squatters are plain sockets of the test.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable
from ipaddress import ip_address, ip_network

import pytest
import uvloop

from agent.config import HeartbeatLink
from agent.runtime import heartbeat
from agent.runtime.heartbeat import GTSM_TTL, RECEIVE_BUFFER, HeartbeatPort
from agent.runtime.ifaddr import interface_addresses, local_address

FLOOD_LIMIT = 100_000
FAMILIES = {"v4": (socket.AF_INET, "127.0.0.1"), "v6": (socket.AF_INET6, "::1")}


def free_port(family: int = socket.AF_INET) -> int:
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return probe.getsockname()[1]


def lo_link(peer: str, port: int) -> HeartbeatLink:
    return HeartbeatLink("lo", None, (ip_address(peer),), port)


def sender(family: int, source: str, hops: int) -> socket.socket:
    """A plain socket on `source` that sends with TTL / hop limit `hops`."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hops)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hops)
    sock.bind((source, 0))
    return sock


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


class Recorder:
    """The receiver and on_change of a port under test."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.changes: list[str] = []

    def datagram(self, data: bytes, link: str) -> None:
        assert link == "lo"
        self.frames.append(data)

    def changed(self, name: str) -> None:
        self.changes.append(name)

    def port(self, link: HeartbeatLink) -> HeartbeatPort:
        return HeartbeatPort(link, asyncio.get_running_loop(), self.datagram, self.changed)


# --- which local address a peers link binds ----------------------------------------------


@pytest.mark.parametrize("peers, addresses, expected", [
    # The prefix that holds a peer decides, not the order of the interface's addresses.
    (("192.0.2.2",), [("198.51.100.1", "198.51.100.0/24"), ("192.0.2.1", "192.0.2.0/30")], "192.0.2.1"),
    # The first listed peer with a match wins.
    (("203.0.113.9", "192.0.2.2"), [("192.0.2.1", "192.0.2.0/30"), ("203.0.113.1", "203.0.113.0/24")],
     "203.0.113.1"),
    # Point-to-point: the prefix is the far end's /32.
    (("192.0.2.9",), [("192.0.2.1", "192.0.2.9/32")], "192.0.2.1"),
    # IPv6 link-local peers get the link-local address, global ones the address of their prefix.
    (("fe80::2",), [("2001:db8:9::1", "2001:db8:9::/64"), ("fe80::1", "fe80::/64")], "fe80::1"),
    (("2001:db8:9::2",), [("fe80::1", "fe80::/64"), ("2001:db8:9::1", "2001:db8:9::/64")], "2001:db8:9::1"),
    # A peer outside every prefix would be routed (and fail GTSM): no address, no guess.
    (("192.0.2.99",), [("192.0.2.1", "192.0.2.0/30")], None),
])
def test_a_peers_link_binds_the_address_in_the_prefix_of_a_peer(peers, addresses, expected):
    found = local_address(tuple(ip_address(p) for p in peers),
                          [(ip_address(a), ip_network(n)) for a, n in addresses])
    assert found == (ip_address(expected) if expected else None)


def test_the_address_dump_reads_the_loopback_addresses():
    found = interface_addresses(socket.if_nametoindex("lo"), socket.AF_INET)
    assert (ip_address("127.0.0.1"), ip_network("127.0.0.0/8")) in found
    assert all(a.version == 4 for a, _ in found)


def test_a_peer_outside_every_prefix_keeps_the_port_closed_with_the_reason():
    async def main() -> tuple[bool, str]:
        port = Recorder().port(lo_link("192.0.2.2", free_port()))
        port.want(True)
        try:
            return port.is_open, port.last_error
        finally:
            port.close()

    assert uvloop.run(main()) == (False, "open: no IPv4 address on lo in the prefix of a peer")


# --- what is accepted and what is dropped -------------------------------------------------


def deliver(link: HeartbeatLink, to: str, sends: list[tuple[str, int, bytes]]) -> tuple[list[bytes], dict]:
    """Open a port for `link`, send it each (source, hops, payload) at `to`, in order: what the
    receiver got once the last one came through, and what the port dropped."""
    family = socket.AF_INET6 if ":" in to else socket.AF_INET

    async def main() -> tuple[list[bytes], dict]:
        recorder = Recorder()
        port = recorder.port(link)
        port.want(True)
        assert port.is_open, port.last_error
        for source, hops, payload in sends:
            with sender(family, source, hops) as sock:
                sock.sendto(payload, (to, link.port))
        # Loopback keeps the order: the last one in means all the others were read.
        await until(lambda: recorder.frames)
        port.close()
        return recorder.frames, dict(port.drops)

    return uvloop.run(main())


@pytest.mark.parametrize("family", FAMILIES)
def test_frames_that_crossed_a_router_are_dropped_and_counted(family):
    af, address = FAMILIES[family]
    frames, drops = deliver(lo_link(address, free_port(af)), address,
                            [(address, 64, b"routed"), (address, GTSM_TTL, b"direct")])
    assert frames == [b"direct"]
    assert drops == {"ttl": 1}


def test_frames_from_an_address_that_is_not_a_peer_are_dropped_and_counted():
    # The port binds 127.0.0.1, lo's address in the peer's prefix 127.0.0.0/8.
    frames, drops = deliver(lo_link("127.0.0.2", free_port()), "127.0.0.1",
                            [("127.0.0.3", GTSM_TTL, b"stranger"), ("127.0.0.2", GTSM_TTL, b"peer")])
    assert frames == [b"peer"]
    assert drops == {"source": 1}


def test_frames_leave_with_ttl_255_from_the_link_address():
    port_number = free_port()

    async def main() -> tuple[bytes, int, str]:
        port = Recorder().port(lo_link("127.0.0.2", port_number))
        # The peer: lo's other address, on the same port (IPv6 has only ::1 on lo, see tests/netns).
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.setsockopt(socket.IPPROTO_IP, heartbeat.IP_RECVTTL, 1)
            peer.bind(("127.0.0.2", port_number))
            port.want(True)
            assert port.is_open, port.last_error
            port.send(b"advert")
            data, ancillary, _flags, source = peer.recvmsg(64, socket.CMSG_SPACE(4))
        port.close()
        return data, heartbeat.hop_limit(ancillary), source[0]

    assert uvloop.run(main()) == (b"advert", GTSM_TTL, "127.0.0.1")


def test_the_receive_buffer_holds_a_burst():
    link = lo_link("127.0.0.1", free_port())
    with heartbeat.open_socket(link, socket.if_nametoindex("lo")) as sock:
        size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    with open("/proc/sys/net/core/rmem_max") as f:
        cap = RECEIVE_BUFFER if os.geteuid() == 0 else min(RECEIVE_BUFFER, int(f.read()))
    # The kernel doubles what it is given, for its bookkeeping.
    assert size >= 2 * cap


# --- nobody else gets the port --------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0"])
@pytest.mark.parametrize("option", [None, socket.SO_REUSEADDR, socket.SO_REUSEPORT])
def test_an_open_port_cannot_be_bound_by_anyone_else(address, option):
    port_number = free_port()

    async def main() -> int:
        port = Recorder().port(lo_link("127.0.0.1", port_number))
        port.want(True)
        assert port.is_open, port.last_error
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
                if option is not None:
                    squatter.setsockopt(socket.SOL_SOCKET, option, 1)
                try:
                    squatter.bind((address, port_number))
                except OSError as exc:
                    return exc.errno
                return 0
        finally:
            port.close()

    assert uvloop.run(main()) == errno.EADDRINUSE


# --- opening, retrying, closing ---------------------------------------------------------------


def test_a_taken_port_is_not_open_and_opens_once_it_is_free():
    port_number = free_port()
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("127.0.0.1", port_number))

    async def main() -> tuple[str, list[str], bool, str]:
        recorder = Recorder()
        port = recorder.port(lo_link("127.0.0.1", port_number))
        port.want(True)
        refused = port.last_error
        assert not port.is_open
        await asyncio.sleep(0.15)
        assert not port.is_open and recorder.changes == []
        squatter.close()
        opened = await until(lambda: port.is_open)
        await asyncio.sleep(0)
        port.close()
        return refused, recorder.changes, opened, port.last_error

    try:
        refused, changes, opened, error = uvloop.run(main())
    finally:
        squatter.close()
    assert refused == "open: Address already in use"
    assert opened and changes == ["lo"]
    assert error == ""


def test_want_false_closes_tells_and_stops_retrying():
    port_number = free_port()

    async def main() -> tuple[list[str], bool]:
        recorder = Recorder()
        port = recorder.port(lo_link("127.0.0.1", port_number))
        port.want(True)
        await asyncio.sleep(0)
        assert port.is_open and recorder.changes == ["lo"]
        port.want(False)
        await asyncio.sleep(0)
        assert not port.is_open and recorder.changes == ["lo", "lo"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
            squatter.bind(("127.0.0.1", port_number))
            port.want(True)
            port.want(False)
        await asyncio.sleep(0.3)  # past the first retries: none may come
        port.close()
        return recorder.changes, port.is_open

    changes, is_open = uvloop.run(main())
    assert changes == ["lo", "lo"]
    assert not is_open


def test_want_true_on_an_open_port_reopens_it_without_telling(monkeypatch):
    opened = []

    def counting(link: HeartbeatLink, index: int) -> socket.socket:
        sock = real(link, index)
        opened.append(sock)
        return sock

    real = heartbeat.open_socket
    monkeypatch.setattr(heartbeat, "open_socket", counting)
    port_number = free_port()

    async def main() -> list[str]:
        recorder = Recorder()
        port = recorder.port(lo_link("127.0.0.1", port_number))
        port.want(True)
        await asyncio.sleep(0)
        port.want(True)
        await asyncio.sleep(0)
        assert port.is_open
        # The first socket is closed: its port is bound again by the second.
        assert opened[0].fileno() == -1 and opened[1].fileno() != -1
        with sender(socket.AF_INET, "127.0.0.1", GTSM_TTL) as peer:
            peer.sendto(b"after", ("127.0.0.1", port_number))
            await until(lambda: recorder.frames)
        port.close()
        return recorder.changes + [f.decode() for f in recorder.frames]

    assert uvloop.run(main()) == ["lo", "after"]
    assert len(opened) == 2


def test_a_closed_port_sends_nothing_and_close_tells_nothing():
    async def main() -> list[str]:
        recorder = Recorder()
        port = recorder.port(lo_link("127.0.0.1", free_port()))
        port.send(b"nothing")
        port.want(True)
        port.close()
        port.send(b"nothing")
        await asyncio.sleep(0.01)
        assert port.send_errors == 0
        return recorder.changes

    assert uvloop.run(main()) == []


# --- the event loop under a flood ---------------------------------------------------------------


def test_timers_run_while_a_flood_keeps_the_socket_readable():
    port_number = free_port()
    tx = sender(socket.AF_INET, "127.0.0.1", GTSM_TTL)
    received = 0

    def on_datagram(_data: bytes, _link: str) -> None:
        # Every datagram read brings another: the queue never runs dry, as under a flood.
        nonlocal received
        received += 1
        if received < FLOOD_LIMIT:
            tx.sendto(b"garbage", ("127.0.0.1", port_number))

    async def main() -> int:
        loop = asyncio.get_running_loop()
        port = HeartbeatPort(lo_link("127.0.0.1", port_number), loop, on_datagram, lambda _name: None)
        port.want(True)
        assert port.is_open, port.last_error
        for _ in range(8):
            tx.sendto(b"garbage", ("127.0.0.1", port_number))
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
