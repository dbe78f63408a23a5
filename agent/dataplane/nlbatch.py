"""Bulk rtnetlink: many route/address messages per sendmsg, errors collected by sequence.

pyroute2 stays the library for lookups, dumps and link events. For bulk changes it
is the bottleneck: encoding one RTM_NEWROUTE through its message classes took
49 us here against the kernel's 21 us to apply it (65,536 /32 local routes: 3.2 s
encoding, 1.35 s in the kernel). These messages are fixed-layout, so they are
packed with struct in about 2 us each.

Messages carry no NLM_F_ACK: rtnetlink applies a whole sendmsg synchronously, so when
send() returns every message has been applied, and the kernel still reports each
failure as an NLMSG_ERROR naming the message's sequence number.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, IPv4Network, IPv6Network
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.dataplane.step import StepResult

NLM_F_REQUEST = 0x001
NLM_F_CREATE = 0x400
NLM_F_EXCL = 0x200
NLMSG_ERROR = 2
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTA_DST, RTA_OIF, RTA_TABLE = 1, 4, 15
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS, IFA_PROTO = 1, 2, 8, 11
IFA_F_NODAD = 0x02
RT_TABLE_LOCAL = 255
RT_SCOPE_HOST = 254
RT_SCOPE_UNIVERSE = 0
RTN_LOCAL = 2
RTN_UNREACHABLE = 7

_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTA = struct.Struct("=HH")
_U32_ATTR = struct.Struct("=HHI")
_U8_ATTR = struct.Struct("=HHBxxx")

# rtnetlink applies a whole sendmsg without a chance to reschedule, so the batch
# bounds how long the kernel keeps this CPU from everything else, the agent's own
# event loop included. A local route costs about 21 us (512: ~10 ms); an IPv6
# interface address 1 to 3 ms (on a loaded machine 512 stalled the loop 370 ms here,
# 8 stalled it 5 ms; bench/addresses.py measures both).
ROUTES_PER_SEND = 512
IPV6_ADDRESSES_PER_SEND = 8

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


def _attr(kind: int, payload: bytes) -> bytes:
    header = _RTA.pack(_RTA.size + len(payload), kind)
    pad = b"\0" * (-len(payload) % 4)
    return header + payload + pad


def _family(packed_len: int) -> int:
    return socket.AF_INET if packed_len == 4 else socket.AF_INET6


def local_route(network: Network, proto: int, oif: int) -> bytes:
    """`local NETWORK dev OIF table local proto PROTO` as an RTM_NEWROUTE/DELROUTE body."""
    dst = network.network_address.packed
    body = _RTMSG.pack(
        _family(len(dst)), network.prefixlen, 0, 0, RT_TABLE_LOCAL, proto,
        RT_SCOPE_HOST, RTN_LOCAL, 0,
    )
    body += _attr(RTA_DST, dst) + _U32_ATTR.pack(8, RTA_OIF, oif)
    return body


def table_route(network: Network, proto: int, table: int, kind: int = RTN_UNREACHABLE) -> bytes:
    """`unreachable NETWORK table TABLE proto PROTO` (or another route type without a
    next hop) as an RTM_NEWROUTE/DELROUTE body."""
    dst = network.network_address.packed
    body = _RTMSG.pack(
        _family(len(dst)), network.prefixlen, 0, 0, table if table < 256 else 0, proto,
        RT_SCOPE_UNIVERSE, kind, 0,
    )
    return body + _attr(RTA_DST, dst) + _U32_ATTR.pack(8, RTA_TABLE, table)


def interface_address(address: Address, proto: int, index: int) -> bytes:
    """A host address on an interface, marked with IFA_PROTO and without DAD."""
    raw = address.packed
    body = _IFADDRMSG.pack(_family(len(raw)), len(raw) * 8, 0, 0, index)
    body += _attr(IFA_LOCAL, raw) + _attr(IFA_ADDRESS, raw)
    body += _U32_ATTR.pack(8, IFA_FLAGS, IFA_F_NODAD) + _U8_ATTR.pack(5, IFA_PROTO, proto)
    return body


@dataclass
class BatchResult:
    """What the kernel said about one batch; `failed` maps errno names to the items that hit them."""

    applied: int = 0
    failed: dict[str, list[str]] = field(default_factory=dict)

    def into(self, result: StepResult) -> None:
        """Count this batch in a step's result."""
        result.applied += self.applied
        for name, labels in self.failed.items():
            result.fail(name, labels)


class Batcher:
    """One NETLINK_ROUTE socket that applies lists of messages and reports failures per item."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def apply(self, msg_type: int, items: list[tuple[str, bytes]], per_send: int = ROUTES_PER_SEND,
              stop: Callable[[], bool] | None = None) -> BatchResult:
        """Send (label, body) pairs as `msg_type`, `per_send` to a sendmsg; labels name
        the items in error reports. `stop` is asked before every sendmsg: a take of
        4,096 IPv6 addresses takes seconds and must end at once when the node resigns."""
        flags = NLM_F_REQUEST
        if msg_type in (RTM_NEWROUTE, RTM_NEWADDR):
            flags |= NLM_F_CREATE | NLM_F_EXCL
        result = BatchResult()
        for start in range(0, len(items), per_send):
            if stop is not None and stop():
                break
            chunk = items[start:start + per_send]
            first_seq = self._seq + 1
            frames = []
            for label, body in chunk:
                self._seq = (self._seq + 1) & 0xFFFFFFFF
                frames.append(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, self._seq, 0))
                frames.append(body)
            self._sock.send(b"".join(frames))
            failed = self._drain_errors()
            for seq, err in failed:
                index = (seq - first_seq) & 0xFFFFFFFF
                label = chunk[index][0] if index < len(chunk) else f"seq {seq}"
                result.failed.setdefault(errno.errorcode.get(err, str(err)), []).append(label)
            result.applied += len(chunk) - len(failed)
        return result

    def _drain_errors(self) -> list[tuple[int, int]]:
        errors = []
        while True:
            try:
                data = self._sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return errors
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    break
                if kind == NLMSG_ERROR and offset + 20 <= len(data):
                    (code,) = struct.unpack_from("=i", data, offset + 16)
                    if code:
                        errors.append((seq, -code))
                offset += (length + 3) & ~3
