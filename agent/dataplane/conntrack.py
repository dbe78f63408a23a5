"""ctnetlink through the native codec: the event reader, table dumps, bulk replay, the cache.

The codec (native/ct.c) owns the bytes on these sockets: it parses events and
dump replies into 96-byte records (native/ct_record.h) and encodes records as
IPCTNL_MSG_CT_NEW requests, many per sendmsg and none acknowledged, so a
million entries cost a thousand system calls. Errors still come back, matched
to their record by sequence number. An entry that exists already is updated
in place (no NLM_F_EXCL), and one that refuses the NAT set-up because it
exists is sent again as a plain update, which is what conntrackd does on
EEXIST.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import ip_network

from agent._native._ct import ffi, lib

RECORD_SIZE = lib.DP_CT_RECORD_SIZE
MAX_IGNORE = lib.DP_CT_MAX_IGNORE
# Linux values that Python's socket module does not name.
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_DROP_MEMBERSHIP = 2
NETLINK_CAP_ACK = 10
NETLINK_NO_ENOBUFS = 5
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
# NFNLGRP_CONNTRACK_NEW, _UPDATE, _DESTROY as bind() group bits.
EVENT_GROUPS = 0b111
# Requests per sendmsg in a replay: 1,024 x ~200 bytes stays well inside the send buffer.
BATCH = 1024
REQUEST_BUFFER = 8 << 20
# Failed records whose index a write keeps (the rest are counted only).
MAX_FAILED = 65536
# A dump reply or a burst of events is read this much at a time.
READ_BUFFER = 1 << 20
# How long a replay waits for the kernel's answer to its last request.
ANSWER_TIMEOUT = 30.0


def records_count(records: bytes) -> int:
    return len(records) // RECORD_SIZE


def _force_buffer(sock: socket.socket, option: int, fallback: int, size: int) -> None:
    """SO_*BUFFORCE passes net.core.[rw]mem_max (with CAP_NET_ADMIN)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, option, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, fallback, size)


def open_socket(groups: int = 0, receive_buffer: int = REQUEST_BUFFER) -> socket.socket:
    """A ctnetlink socket: requests when groups is 0, else the event groups it joins."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        _force_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, REQUEST_BUFFER)
        _force_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, receive_buffer)
        # Errors come back with the request's header only, not the whole request.
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        sock.bind((0, groups))
    except OSError:
        sock.close()
        raise
    return sock


def portid(sock: socket.socket) -> int:
    return sock.getsockname()[0]


@dataclass
class Filter:
    """Which flows are synced: conntrackd's Filter section (Protocol Accept, Address Ignore)."""

    protocols: frozenset[int] = frozenset(range(256))
    # Prefixes either side of a flow may be in for it to be left out: the nodes' own addresses.
    ignore: tuple[str, ...] = ()
    # Changes made through this netlink socket (our own injections) are not events to sync.
    ignore_portid: int = 0

    def native(self):
        f = ffi.new("struct dp_ct_filter *")
        f.ignore_portid = self.ignore_portid
        for proto in self.protocols:
            f.protocols[proto // 8] |= 1 << (proto % 8)
        nets = [ip_network(p, strict=False) for p in self.ignore]
        if len(nets) > lib.DP_CT_MAX_IGNORE:
            raise ValueError(f"at most {lib.DP_CT_MAX_IGNORE} ignored prefixes")
        f.n_ignore = len(nets)
        for i, net in enumerate(nets):
            f.ignore[i].family = socket.AF_INET if net.version == 4 else socket.AF_INET6
            f.ignore[i].len = net.prefixlen
            packed = net.network_address.packed
            ffi.memmove(f.ignore[i].addr, packed, len(packed))
        return f


@dataclass
class ParseStats:
    messages: int = 0
    records: int = 0
    ignored: int = 0
    malformed: int = 0
    errors: int = 0
    done: int = 0

    def add(self, native) -> None:
        self.messages += native.messages
        self.records += native.records
        self.ignored += native.ignored
        self.malformed += native.malformed
        self.errors += native.errors
        self.done += native.done


class Parser:
    """Buffers of ctnetlink messages to records, through one reused native output array."""

    def __init__(self, filter: Filter | None = None, capacity: int = 16384) -> None:
        self._filter = filter.native() if filter is not None else ffi.NULL
        self._out = ffi.new("struct dp_ct_record[]", capacity)
        self._capacity = capacity
        self._used = ffi.new("size_t *")
        self.stats = ParseStats()

    def parse(self, data: bytes | bytearray | memoryview) -> tuple[bytes, int]:
        """(records, NLMSG_DONE messages seen) of the messages in data."""
        chunks = []
        done = 0
        view = ffi.from_buffer(data)
        offset, length = 0, len(data)
        while offset < length:
            stats = ffi.new("struct dp_ct_parse_stats *")
            n = lib.dp_ct_parse(view + offset, length - offset, self._used, self._out, self._capacity,
                                self._filter, stats)
            self.stats.add(stats)
            done += stats.done
            chunks.append(bytes(ffi.buffer(self._out, n * RECORD_SIZE)))
            if self._used[0] == 0:
                break
            offset += self._used[0]
        return b"".join(chunks), done


def dump_table(sock: socket.socket | None = None, filter: Filter | None = None) -> bytes:
    """Every entry of this network namespace's table (that the filter keeps), as records."""
    own = sock is None
    sock = sock or open_socket()
    try:
        request = ffi.new("uint8_t[]", 64)
        seq = int(time.monotonic_ns() & 0x7FFFFFFF) or 1
        n = lib.dp_ct_encode_dump(request, 64, seq)
        sock.send(ffi.buffer(request, n))
        parser = Parser(filter)
        chunks = []
        buf = bytearray(READ_BUFFER)
        while True:
            got = sock.recv_into(buf)
            records, done = parser.parse(memoryview(buf)[:got])
            chunks.append(records)
            if done:
                return b"".join(chunks)
            if parser.stats.errors:
                raise OSError(errno.EIO, "the conntrack dump failed")
    finally:
        if own:
            sock.close()


@dataclass
class ReplayResult:
    applied: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    updated: int = 0  # existing entries whose NAT could not be set again: updated instead
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"applied": self.applied, "errors": dict(self.errors), "updated": self.updated,
                "seconds": round(self.seconds, 6)}


class Writer:
    """Sends records as requests in batches and matches the errors to them, in one native
    call per write: nothing returns to Python, whose lock a busy loop holds, until the
    kernel has answered the last request."""

    def __init__(self, sock: socket.socket | None = None, *, liberal: bool = True) -> None:
        self.sock = sock or open_socket()
        self._own = sock is None
        self.sock.setblocking(True)
        self._options = lib.DP_CT_ENC_CREATE | (lib.DP_CT_ENC_LIBERAL if liberal else 0)
        self._failed_index = ffi.new("uint32_t[]", MAX_FAILED)
        self._failed_errno = ffi.new("int32_t[]", MAX_FAILED)
        self._n_failed = ffi.new("size_t *")
        self._seq = 1

    def close(self) -> None:
        if self._own:
            self.sock.close()

    def _write(self, records: bytes, options: int) -> dict[int, int]:
        """Record index -> errno of the records that failed (at most MAX_FAILED kept; the
        others count under "unknown")."""
        n = len(records) // RECORD_SIZE
        seq0 = self._seq
        self._seq = (self._seq + n) & 0x7FFFFFFF or 1
        got = lib.dp_ct_write(self.sock.fileno(), ffi.from_buffer("struct dp_ct_record[]", records), n, options,
                              seq0, BATCH, self._failed_index, self._failed_errno, MAX_FAILED, self._n_failed,
                              int(ANSWER_TIMEOUT * 1000))
        if got == -errno.ETIMEDOUT:
            raise TimeoutError("the kernel did not answer the last conntrack request")
        if got < 0:
            raise OSError(-got, os.strerror(-got))
        kept = min(self._n_failed[0], MAX_FAILED)
        failed = {self._failed_index[i]: self._failed_errno[i] for i in range(kept)}
        if self._n_failed[0] > kept:
            failed[-1] = 0
            self.lost = self._n_failed[0] - kept
        return failed

    def write(self, records: bytes) -> ReplayResult:
        """Create (or update) every record's entry; blocks until the kernel answered all."""
        started = time.perf_counter()
        result = ReplayResult()
        if not records:
            return result
        self.lost = 0
        failed = self._write(records, self._options)
        retry = []
        for index, err in sorted(failed.items()):
            if err in (errno.EOPNOTSUPP, errno.EEXIST):
                retry.append(records[index * RECORD_SIZE:(index + 1) * RECORD_SIZE])
            else:
                name = errno.errorcode.get(err, "unknown") if index >= 0 else "unknown"
                result.errors[name] = result.errors.get(name, 0) + (1 if index >= 0 else self.lost)
        if retry:
            again = self._write(b"".join(retry), self._options & ~lib.DP_CT_ENC_CREATE)
            for index, err in again.items():
                name = errno.errorcode.get(err, "unknown") if index >= 0 else "unknown"
                result.errors[name] = result.errors.get(name, 0) + (1 if index >= 0 else self.lost)
            result.updated = len(retry) - len(again)
        result.applied = len(records) // RECORD_SIZE - sum(result.errors.values())
        result.seconds = time.perf_counter() - started
        return result


def replay(records: bytes, *, liberal: bool = True) -> dict:
    """Create every record's entry in this network namespace's table (bench/conntrack.py)."""
    writer = Writer(liberal=liberal)
    try:
        return writer.write(records).as_dict()
    finally:
        writer.close()


class EventReader:
    """The NEW/UPDATE/DESTROY event groups, read without blocking into records.

    A full receive buffer loses events (ENOBUFS): `read` then reports an overrun,
    after which only a full dump makes the peers' copies right again."""

    def __init__(self, filter: Filter, receive_buffer: int, capacity: int = 65536) -> None:
        self.sock = open_socket(EVENT_GROUPS, receive_buffer)
        self.sock.setblocking(False)
        self._filter = filter.native()
        self._out = ffi.new("struct dp_ct_record[]", capacity)
        self._capacity = capacity
        self._stats = ffi.new("struct dp_ct_parse_stats *")
        self._overruns = ffi.new("uint32_t *")
        self.overruns = 0

    def listen(self, on: bool) -> None:
        """Join or leave the event groups. The kernel delivers an event to every listener
        while it creates an entry, which makes a bulk replay 2.5 times slower (measured
        here: 140,000 against 350,000 entries/s), so the replay leaves them meanwhile."""
        option = NETLINK_ADD_MEMBERSHIP if on else NETLINK_DROP_MEMBERSHIP
        for group in (1, 2, 3):
            self.sock.setsockopt(SOL_NETLINK, option, group)

    @property
    def stats(self) -> ParseStats:
        s = self._stats
        return ParseStats(s.messages, s.records, s.ignored, s.malformed, s.errors, s.done)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, budget: int = 64) -> tuple[bytes, bool]:
        """(records, overrun) of what is queued, at most `budget` system calls' worth."""
        before = self._overruns[0]
        n = lib.dp_ct_read_events(self.sock.fileno(), self._out, self._capacity, self._filter, self._stats,
                                  self._overruns, budget)
        if n < 0:
            raise OSError(-n, os.strerror(-n))
        overrun = self._overruns[0] != before
        self.overruns = self._overruns[0]
        return bytes(ffi.buffer(self._out, n * RECORD_SIZE)), overrun

    def close(self) -> None:
        self.sock.close()


class Cache:
    """The backup's copy of its peers' tables: one entry per original tuple, merged
    from events, under a lock because a replay reads it from a worker thread while
    the loop applies frames."""

    def __init__(self) -> None:
        self._cache = ffi.gc(lib.dp_ct_cache_new(), lib.dp_ct_cache_free)
        if self._cache == ffi.NULL:
            raise MemoryError("conntrack cache")
        self._lock = threading.Lock()

    def apply(self, records: bytes, origin: int = 0, generation: int = 0) -> int:
        view = ffi.from_buffer("struct dp_ct_record[]", records)
        with self._lock:
            changed = lib.dp_ct_cache_apply(self._cache, view, len(records) // RECORD_SIZE, origin, generation)
        if changed == ffi.cast("size_t", -1):
            raise MemoryError("conntrack cache")
        return changed

    def sweep(self, origin: int, generation: int) -> int:
        with self._lock:
            return lib.dp_ct_cache_sweep(self._cache, origin, generation)

    def clear(self) -> None:
        with self._lock:
            lib.dp_ct_cache_clear(self._cache)

    def __len__(self) -> int:
        return lib.dp_ct_cache_count(self._cache)

    @property
    def bytes(self) -> int:
        return lib.dp_ct_cache_bytes(self._cache)

    @property
    def bytes_per_entry(self) -> float:
        return self.bytes / max(1, len(self))

    def export(self, klass: int = lib.DP_CT_CLASS_ALL, chunk: int = 65536) -> Iterator[bytes]:
        """The entries of a class, a chunk at a time (the lock is held per chunk only)."""
        out = ffi.new("struct dp_ct_record[]", chunk)
        cursor = ffi.new("size_t *")
        while True:
            with self._lock:
                n = lib.dp_ct_cache_export(self._cache, cursor, out, chunk, klass)
            if n == 0:
                return
            yield bytes(ffi.buffer(out, n * RECORD_SIZE))


def table_size() -> dict:
    """The kernel's table: entries now, its limit and its hash buckets (sysctls of this namespace)."""
    out = {}
    for key in ("nf_conntrack_count", "nf_conntrack_max", "nf_conntrack_buckets"):
        try:
            with open(f"/proc/sys/net/netfilter/{key}") as f:
                out[key.removeprefix("nf_conntrack_")] = int(f.read())
        except (OSError, ValueError):
            out[key.removeprefix("nf_conntrack_")] = None
    return out
