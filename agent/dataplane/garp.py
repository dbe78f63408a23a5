"""Announce address takeovers with the native batched GARP / NA sender.

One round sends one gratuitous ARP per IPv4 address and one unsolicited
neighbour advertisement per IPv6 address of a target, in batches from
native/garp.c: through a PACKET_TX_RING flushed by one send() per batch,
or sendmmsg() where the ring cannot be set up. A round blocks (cffi releases the GIL): run it in a
worker thread, never on the event loop. It stops within one batch, or one
pacing slice, of CancelFlag.set(). Repeating rounds is the runtime's job.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

from agent._native._garp import ffi, lib

_IFF_UP = 0x1


class ArpMode(Enum):
    """REQUEST: RFC 5227 announcement (default). REPLY: broadcast reply, like `arping -A`."""

    REQUEST = lib.GARP_KIND_ARP_REQUEST
    REPLY = lib.GARP_KIND_ARP_REPLY


@dataclass(frozen=True)
class AnnounceTarget:
    """Packed addresses to announce on one interface, in network byte order."""

    ifname: str
    ipv4: bytes = b""
    ipv6: bytes = b""

    def __post_init__(self) -> None:
        if len(self.ipv4) % 4 or len(self.ipv6) % 16:
            raise ValueError("ipv4 must be 4-byte and ipv6 16-byte packed addresses")

    @classmethod
    def from_addresses(
        cls, ifname: str, addresses: Iterable[str | ipaddress.IPv4Address | ipaddress.IPv6Address]
    ) -> AnnounceTarget:
        """Pack addresses of either family; prefer building the bytes directly for a /16."""
        v4, v6 = bytearray(), bytearray()
        for item in addresses:
            address = ipaddress.ip_address(item)
            (v4 if address.version == 4 else v6).extend(address.packed)
        return cls(ifname, bytes(v4), bytes(v6))

    @property
    def count(self) -> int:
        return len(self.ipv4) // 4 + len(self.ipv6) // 16


@dataclass(frozen=True)
class RoundResult:
    """What one round did. error is set when the round could not start or was cut short."""

    frames_sent: int
    errors: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    duration: float = 0.0
    cancelled: bool = False
    error: str | None = None


class CancelFlag:
    """A flag in C memory that the native loop polls before every batch."""

    def __init__(self) -> None:
        self._cell = ffi.new("int32_t *")

    def set(self) -> None:
        self._cell[0] = 1

    def is_set(self) -> bool:
        return bool(self._cell[0])

    @property
    def cdata(self):  # noqa: ANN201 - cffi pointer
        return self._cell


def _errno_name(code: int) -> str:
    return errno.errorcode.get(code, f"errno{code}") if code else "other"


def _merge(results: list[RoundResult]) -> RoundResult:
    errors: dict[str, int] = {}
    for result in results:
        for name, n in result.errors.items():
            errors[name] = errors.get(name, 0) + n
    return RoundResult(
        frames_sent=sum(r.frames_sent for r in results),
        errors=MappingProxyType(errors),
        duration=sum(r.duration for r in results),
        cancelled=any(r.cancelled for r in results),
        error=next((r.error for r in results if r.error), None),
    )


class Sender:
    """One AF_PACKET socket and its batch buffers, for one interface.

    The interface is resolved (index, MAC, up) at every round through the
    socket, so it follows a MAC change or a re-created interface, and it is
    looked up in the network namespace the Sender was created in.
    method says how batches go out: "tx-ring" (the default where the kernel
    allows it) or "sendmmsg" (tx_ring=False, or the ring could not be set up).
    """

    def __init__(
        self, ifname: str, arp_mode: ArpMode = ArpMode.REQUEST, na_router: bool = False, *, tx_ring: bool = True
    ) -> None:
        err = ffi.new("int32_t *")
        handle = lib.garp_sender_new(0 if tx_ring else lib.GARP_F_NO_RING, err)
        if handle == ffi.NULL:
            raise OSError(-err[0], f"garp sender socket: {os.strerror(-err[0])}")
        self._handle = ffi.gc(handle, lib.garp_sender_free)
        self._lock = threading.Lock()
        self.ifname = ifname
        self.arp_mode = arp_mode
        self.na_router = na_router
        self.method = "tx-ring" if lib.garp_sender_uses_ring(handle) else "sendmmsg"

    def send_round(self, target: AnnounceTarget, pps: int = 0, cancel: CancelFlag | None = None) -> RoundResult:
        """Send one frame per address, at most pps frames/s (0: unpaced). Blocks."""
        if target.ifname != self.ifname:
            raise ValueError(f"sender for {self.ifname} given a target on {target.ifname}")
        if pps < 0:
            raise ValueError("pps must be >= 0")
        with self._lock:
            if self._handle is None:
                raise ValueError("sender is closed")
            info = ffi.new("struct garp_ifinfo *")
            rc = lib.garp_ifinfo(self._handle, self.ifname.encode(), info)
            if rc == -errno.ENODEV:
                return RoundResult(0, error=f"interface {self.ifname} not found")
            if rc:
                return RoundResult(0, error=f"interface {self.ifname}: {os.strerror(-rc)}")
            if not info.flags & _IFF_UP:
                return RoundResult(0, error=f"interface {self.ifname} is down")
            flag = cancel.cdata if cancel is not None else ffi.NULL
            results = []
            for kind, packed, size in (
                (self.arp_mode.value, target.ipv4, 4),
                (lib.GARP_KIND_NA, target.ipv6, 16),
            ):
                if not packed:
                    continue
                result = self._send(info, kind, packed, len(packed) // size, pps, flag)
                results.append(result)
                if result.cancelled or result.error:
                    break
            return _merge(results) if results else RoundResult(0)

    def _send(self, info, kind: int, packed: bytes, count: int, pps: int, flag) -> RoundResult:  # noqa: ANN001 - cffi
        params = ffi.new("struct garp_params *")
        params.ifindex = info.ifindex
        params.pps = pps
        params.mac = info.mac
        params.kind = kind
        params.na_router = int(self.na_router)
        res = ffi.new("struct garp_result *")
        status = lib.garp_send(self._handle, params, packed, count, flag, res)
        errors = {_errno_name(code): int(n) for code, n in enumerate(res.errors) if n}
        error = None
        if status:
            error = f"{_errno_name(-status)} on {self.ifname}: {os.strerror(-status)}"
        return RoundResult(
            frames_sent=int(res.frames_sent),
            errors=MappingProxyType(errors),
            duration=res.duration_ns / 1e9,
            cancelled=bool(res.cancelled),
            error=error,
        )

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                ffi.release(self._handle)
                self._handle = None

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
