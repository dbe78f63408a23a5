"""One UDP socket per heartbeat link, pinned to its interface, that no local user can take over.

Each link is either a multicast group (like VRRP's 224.0.0.18, but our own group and
port) or a list of unicast peers. Sockets are bound to their device so that a frame
is attributed to the link it really came in on: that is what lets the core see that
one of two links is dead without failing over.

What the socket binds, and why nobody else gets our frames:
- No SO_REUSEADDR (nor SO_REUSEPORT). For UDP the kernel lets a second socket bind
  an overlapping address and port only if both sockets set it (udp_lib_lport_inuse):
  without it, once the port is open, every bind by another process of that port on a
  wildcard or on our address (on our device or on none) fails with EADDRINUSE. With
  it, any user could bind the more specific address and the kernel would hand our
  unicast frames to that socket instead of ours.
- Peers links bind the link's own address: the interface's first address (of the
  peers' family) whose on-link prefix holds a peer, in the order the peers are
  listed. That is the address the peers send to, and the one our frames come from.
  GTSM (below) already requires the peers to be one hop away, and the prefix is how
  the kernel itself decides what is on the link, so there is no fallback to some
  other address: a peer outside every prefix of the interface is a configuration
  error, shown in `last_error` and retried. A point-to-point address (`ip addr add A
  peer B`) has B's /32 as its prefix, so it counts. IPv6 link-local peers match the
  interface's fe80::/64 and get its link-local address, bound with the interface's
  scope id; global peers get the global address of their prefix. One link has one
  local address: every peer must send to that one.
- Multicast links bind the group (IPv6: the group with the interface's scope id), so
  that only frames to the group are read. Multicast is delivered to every socket
  that matches, so a squatter could at worst read copies (the frames are
  authenticated, not secret), but without SO_REUSEADDR it cannot bind the group or a
  wildcard on the port either.
What remains is squatting the port before the agent opens it: the port then stays
closed (`last_error` says so) and is retried with back-off. Only a port below
net.ipv4.ip_unprivileged_port_start (1024 by default, and it also governs IPv6)
rules that out, since binding those needs CAP_NET_BIND_SERVICE.

GTSM (RFC 5082), as VRRP does it: everything leaves with TTL / hop limit 255, and a
frame that arrives with less crossed a router, so it is dropped. So are frames from
a source that is not one of a peers link's peers. Both are counted in `drops`.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import Counter
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from agent.config import HeartbeatLink
from agent.core.packing import IPAddress
from agent.runtime.ifaddr import bind_address

# Frames are 64 bytes; anything bigger is read whole so the core can count it as "long".
_MAX_DATAGRAM = 2048
# Datagrams read per wake-up: a flood must not keep the loop from sending our own adverts.
_MAX_BATCH = 64
# A burst (a peer's adverts after its stall, a flood) must not push out the adverts behind it.
RECEIVE_BUFFER = 1 << 20
GTSM_TTL = 255
# Retries of a port that does not open: first after RETRY_FIRST, doubling up to RETRY_MAX.
RETRY_FIRST = 0.1
RETRY_MAX = 5.0

# Linux values that Python's socket module does not name.
SO_RCVBUFFORCE = 33
IP_RECVTTL = 12

_INT = struct.Struct("=i")

# The TTL / hop limit of a datagram, as IP_RECVTTL / IPV6_RECVHOPLIMIT deliver it.
_HOP_LIMIT_CMSG = {(socket.IPPROTO_IP, socket.IP_TTL), (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT)}
ANCILLARY_SIZE = socket.CMSG_SPACE(_INT.size)

Receiver = Callable[[bytes, str], None]
OnChange = Callable[[str], None]


def family_of(link: HeartbeatLink) -> socket.AddressFamily:
    first = link.group if link.group is not None else link.peers[0]
    return socket.AF_INET6 if isinstance(first, IPv6Address) else socket.AF_INET


def _plain(address: IPAddress) -> str:
    """The address without an IPv6 zone ("%hb0"): the scope id says it, in the sockaddr."""
    return socket.inet_ntop(socket.AF_INET6 if address.version == 6 else socket.AF_INET, address.packed)


def sockaddr(family: socket.AddressFamily, address: IPAddress, port: int, index: int) -> tuple:
    # The kernel reads the scope id only where the address needs one (link-local unicast and multicast).
    return (_plain(address), port) if family == socket.AF_INET else (_plain(address), port, 0, index)


def _set_receive_buffer(sock: socket.socket, size: int) -> None:
    """SO_RCVBUFFORCE passes net.core.rmem_max (with CAP_NET_ADMIN); SO_RCVBUF is capped by it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _set_gtsm(sock: socket.socket, family: socket.AddressFamily) -> None:
    """Send with TTL / hop limit 255 whatever the destination, and learn each arrival's."""
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, GTSM_TTL)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, GTSM_TTL)
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, GTSM_TTL)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, GTSM_TTL)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)


def _join(sock: socket.socket, group: IPAddress, index: int) -> None:
    if isinstance(group, IPv4Address):
        mreqn = group.packed + b"\0\0\0\0" + struct.pack("@i", index)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group.packed + struct.pack("@I", index))
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)


# Heartbeats must win against bulk traffic on a shared link: TOS/class "network control".
NETWORK_CONTROL = 0xC0


def open_socket(link: HeartbeatLink, index: int, *, receive_buffer: int = RECEIVE_BUFFER,
                tos: int = NETWORK_CONTROL) -> socket.socket:
    """A link's socket, bound and protected as the module's docstring says (also the sync's)."""
    family = family_of(link)
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        # Before bind: the device is part of what the bind conflicts with.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, link.interface.encode())
        _set_receive_buffer(sock, receive_buffer)
        _set_gtsm(sock, family)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
        sock.bind(sockaddr(family, bind_address(link, family, index), link.port, index))
        if link.group is not None:
            _join(sock, link.group, index)
        return sock
    except OSError:
        sock.close()
        raise


def hop_limit(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The arrival's TTL / hop limit; 0 (dropped) if the kernel gave none."""
    for level, kind, data in ancillary:
        if (level, kind) in _HOP_LIMIT_CMSG and len(data) >= _INT.size:
            return _INT.unpack_from(data)[0]
    return 0


class HeartbeatPort:
    """A heartbeat link's socket: open while the kernel says the link is usable, retried while it cannot be.

    `on_change(name)` is called from the loop (never from inside want() or close())
    once is_open has settled on a value other than the one last reported (at first:
    closed); a reopen that succeeds is no change. Read `is_open` when it comes.
    """

    def __init__(self, link: HeartbeatLink, loop: asyncio.AbstractEventLoop, receiver: Receiver,
                 on_change: OnChange) -> None:
        self.link = link
        self.name = link.interface
        self._loop = loop
        self._receiver = receiver
        self._on_change = on_change
        self._family = family_of(link)
        self._sock: socket.socket | None = None
        self._targets: list[tuple] = []
        # Packed source addresses accepted; None on a multicast link, whose peers are not listed.
        self._sources = frozenset(p.packed for p in link.peers) if link.group is None else None
        self._retry: asyncio.TimerHandle | None = None
        self._delay = RETRY_FIRST
        self._reported = False
        self._report: asyncio.Handle | None = None
        self.send_errors = 0
        self.last_error = ""
        self.drops: Counter[str] = Counter()

    @property
    def is_open(self) -> bool:
        return self._sock is not None

    def want(self, usable: bool) -> None:
        """The kernel's word on the link, at every link event: (re)open now if usable, else close.

        An open port is reopened, since a re-created interface needs a new socket;
        back-off starts afresh either way."""
        self._stop_retrying()
        self._shut()
        self._delay = RETRY_FIRST
        if usable:
            self._try_open()
        self._changed()

    def close(self) -> None:
        """For good (shutdown): closed, no retries, and no on_change any more."""
        self._stop_retrying()
        self._shut()
        if self._report is not None:
            self._report.cancel()
            self._report = None
        self._reported = False

    def send(self, data: bytes) -> None:
        # A closed port is a link that is down here; want() and the retries reopen it.
        if self._sock is None:
            return
        for target in self._targets:
            try:
                self._sock.sendto(data, target)
            except OSError as exc:
                self.send_errors += 1
                self.last_error = f"send: {exc.strerror or exc}"

    # --- opening and closing ------------------------------------------------------------

    def _try_open(self) -> None:
        try:
            index = socket.if_nametoindex(self.name)
            sock = open_socket(self.link, index)
        except OSError as exc:
            self.last_error = f"open: {exc.strerror or exc}"
            self._retry = self._loop.call_later(self._delay, self._retry_open)
            self._delay = min(self._delay * 2, RETRY_MAX)
            return
        self._sock = sock
        self._targets = ([sockaddr(self._family, self.link.group, self.link.port, index)]
                         if self.link.group is not None
                         else [sockaddr(self._family, p, self.link.port, index) for p in self.link.peers])
        self.last_error = ""
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def _retry_open(self) -> None:
        # Only ever pending while wanted and closed: want() and close() cancel it.
        self._retry = None
        self._try_open()
        self._changed()

    def _stop_retrying(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    def _shut(self) -> None:
        if self._sock is None:
            return
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None

    def _changed(self) -> None:
        if self._report is None and self.is_open != self._reported:
            self._report = self._loop.call_soon(self._tell)

    def _tell(self) -> None:
        self._report = None
        if self.is_open != self._reported:
            self._reported = self.is_open
            self._on_change(self.name)

    # --- receiving ----------------------------------------------------------------------

    def _rejected(self, ancillary: list[tuple[int, int, bytes]], source: tuple) -> str:
        """Why a datagram is dropped before the core sees it, or "" if it is not."""
        if hop_limit(ancillary) < GTSM_TTL:
            return "ttl"
        if self._sources is not None and socket.inet_pton(self._family, source[0]) not in self._sources:
            return "source"
        return ""

    def _on_readable(self) -> None:
        sock = self._sock
        # Drain what is queued, so that after a stall older adverts do not lag behind, but in
        # batches: the reader stays ready, and timers due meanwhile run between two batches.
        for _ in range(_MAX_BATCH):
            if sock is not self._sock:
                return
            try:
                data, ancillary, _flags, source = sock.recvmsg(_MAX_DATAGRAM, ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.last_error = f"recv: {exc.strerror or exc}"
                return
            reason = self._rejected(ancillary, source)
            if reason:
                self.drops[reason] += 1
                continue
            self._receiver(data, self.name)
