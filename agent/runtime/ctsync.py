"""Connection-tracking sync on the loop: kernel events out to the peers, their changes in.

Events are read from the ctnetlink groups whenever the socket is readable and,
while this node holds a block (it is the one whose table carries traffic),
sent to every peer through its channel (core.sync: sequenced, acked, resent).
A backup sends nothing: what its kernel does with entries it was given
(timeouts, the replay's own creations) is no news to the master.

What arrives goes, per the mode, into the cache (written on takeover by the
conntrack step) or straight into this node's kernel, through one writer
socket in a worker thread whose own changes the event reader ignores.

Full tables: a peer that appears, restarts, asks, or had its queue overflow
gets a dump of our table; an overrun of our event socket (ENOBUFS: events
lost) sends every peer a fresh dump. A resync is a barrier: the receiver
sweeps what the dump no longer has from its cache.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter, deque
from concurrent.futures import Executor
from collections.abc import Callable

from agent.config import ConntrackConfig, HeartbeatLink
from agent.core.sync import SyncChannel, SyncConfig
from agent.core.wire import KeyRing, epoch_limit
from agent.core.syncwire import FLAG_RESYNC_BEGIN, FLAG_RESYNC_END
from agent.dataplane import conntrack as ct
from agent.runtime.heartbeat import ANCILLARY_SIZE, GTSM_TTL, hop_limit, open_socket, sockaddr
from agent.runtime.ifaddr import interface_addresses

log = logging.getLogger("dpagent")

SYNC_RECEIVE_BUFFER = 16 << 20
RETRY_OPEN = 1.0
# Datagrams and event reads per wake-up, so that the loop's timers (the adverts) run between.
DATAGRAM_BATCH = 256
EVENT_BATCH = 8
# Dump chunks handed to a channel at once (records).
DUMP_CHUNK = 4096
# Records handed to the channels per loop turn (~1,200 frames, a few ms), and how soon a
# channel without room is looked at again.
PUMP_RECORDS = 16384
PUMP_RETRY = 0.005
# Events read while a dump runs and held behind it, at most (bytes); past it they are dropped
# and a second dump follows.
HELD_MAX = 128 << 20
# How often the event socket is read whatever the loop's poller says: after ENOBUFS, uvloop
# stops watching a netlink socket (an error on the fd) without a word, and only this notices.
EVENT_WATCH = 0.1


def own_addresses(interfaces: tuple[str, ...]) -> tuple[str, ...]:
    """The addresses this node has on these interfaces now (those that exist)."""
    found = []
    for name in dict.fromkeys(interfaces):
        try:
            index = socket.if_nametoindex(name)
            for family in (socket.AF_INET, socket.AF_INET6):
                found += [str(address).partition("%")[0] for address, _ in interface_addresses(index, family)]
        except OSError:
            continue
    return tuple(dict.fromkeys(found))


def sizing(expected: int, size: dict) -> list[str]:
    """What to set so that the kernel's table holds the `expected` entries a takeover brings."""
    warnings = []
    if expected and size.get("max") is not None and size["max"] < expected:
        warnings.append(f"net.netfilter.nf_conntrack_max is {size['max']}, under the {expected} entries "
                        f"expected: set it to {expected} or more")
    if expected and size.get("buckets") is not None and size["buckets"] < expected // 2:
        warnings.append(f"the conntrack hash table has {size['buckets']} buckets for {expected} entries "
                        f"expected: set /sys/module/nf_conntrack/parameters/hashsize to {expected} or more")
    return warnings


class ConntrackSync:
    def __init__(self, loop: asyncio.AbstractEventLoop, config: ConntrackConfig, keyring: KeyRing, node_id: int,
                 epoch: int, executor: Executor, holding: Callable[[], bool],
                 extra_ignore: tuple[str, ...] = (), link_interfaces: tuple[str, ...] = ()) -> None:
        self.config = config
        self.hot = config.mode == "hot"
        self._loop = loop
        self._executor = executor
        self._holding = holding
        self._epoch = epoch
        self._started = loop.time()
        self.cache = None if self.hot else ct.Cache()
        self.writer = ct.Writer(liberal=not config.window_tracking)
        self._ignore = tuple(str(p) for p in config.ignore) + extra_ignore
        self._link_interfaces = (config.interface, *link_interfaces)
        self._filter = ct.Filter(config.protocols, self._ignore, ct.portid(self.writer.sock))
        self._link = HeartbeatLink(config.interface, None, config.peers, config.port)
        sync_config = SyncConfig(datagram_size=config.max_datagram)
        self.channels = {str(peer): SyncChannel(node_id, epoch, keyring, sync_config) for peer in config.peers}
        self._origin = {str(peer): i + 1 for i, peer in enumerate(config.peers)}
        self._generation = Counter[str]()
        self._reader: ct.EventReader | None = None
        self._sock: socket.socket | None = None
        self._targets: dict[str, tuple] = {}
        self._family = socket.AF_INET6 if config.peers[0].version == 6 else socket.AF_INET
        self._timer: asyncio.TimerHandle | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._dumping = False
        self._dump_again = False
        self._dump_all = False
        self.last_dump_seconds = 0.0
        self._pending_hot: list[bytes] = []
        # Per peer, what waits for room in its channel: (records, resync_begin, resync_end).
        self._outbox: dict[str, deque[tuple[bytes, bool, bool]]] = {peer: deque() for peer in self.channels}
        self._pump_handle: asyncio.TimerHandle | None = None
        self._read_events = False
        # Events read while a dump runs, sent behind it.
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._watch: asyncio.TimerHandle | None = None
        self._hot_busy = False
        self.counters: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.last_error = ""
        self._events_window = (loop.time(), 0)
        self.events_per_s = 0.0

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        # Address Ignore, as conntrackd's users fill it in by hand: the nodes' own link addresses.
        ignore = tuple(dict.fromkeys(self._ignore + own_addresses(self._link_interfaces)))
        if len(ignore) > ct.MAX_IGNORE:
            log.error("conntrack: %d addresses to ignore, the filter takes %d; syncing the flows of %s",
                      len(ignore), ct.MAX_IGNORE, ", ".join(ignore[ct.MAX_IGNORE:]))
        self._filter.ignore = ignore[:ct.MAX_IGNORE]
        self._reader = ct.EventReader(self._filter, self.config.event_buffer)
        self._loop.add_reader(self._reader.fileno(), self._on_events)
        self._read_events = True
        for warning in self.sizing(ct.table_size()):
            log.error("conntrack: %s", warning)
        self._watch = self._loop.call_later(EVENT_WATCH, self._watch_events)
        self._open()

    def close(self) -> None:
        for handle in (self._timer, self._retry, self._pump_handle, self._watch):
            if handle is not None:
                handle.cancel()
        if self._reader is not None:
            self._reading(False)
            self._reader.close()
            self._reader = None
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        self.writer.close()

    def _open(self) -> None:
        self._retry = None
        try:
            index = socket.if_nametoindex(self.config.interface)
            sock = open_socket(self._link, index, receive_buffer=SYNC_RECEIVE_BUFFER, tos=0)
        except OSError as exc:
            self.last_error = f"open: {exc.strerror or exc}"
            self._retry = self._loop.call_later(RETRY_OPEN, self._open)
            return
        self.last_error = ""
        self._sock = sock
        self._targets = {str(p): sockaddr(self._family, p, self.config.port, index) for p in self.config.peers}
        self._loop.add_reader(sock.fileno(), self._on_datagrams)
        self._rearm()

    # --- frames out -----------------------------------------------------------------------

    def _transmit(self, peer: str, frames: list[bytes]) -> None:
        if self._sock is None or not frames:
            return
        target = self._targets[peer]
        for frame in frames:
            try:
                self._sock.sendto(frame, target)
            except BlockingIOError:
                # The channel resends what is not acked.
                self.counters["send_blocked"] += 1
            except OSError as exc:
                self.counters["send_errors"] += 1
                self.last_error = f"send: {exc.strerror or exc}"
        self.counters["frames_sent"] += len(frames)

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = [t for t in (ch.get_timer() for ch in self.channels.values()) if t is not None]
        if due:
            self._timer = self._loop.call_at(max(min(due), self._loop.time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._loop.time()
        for peer, channel in self.channels.items():
            self._transmit(peer, channel.handle_timer(now))
        self._serve_resyncs()
        self._rearm()

    # --- kernel events ----------------------------------------------------------------------

    def _on_events(self) -> None:
        if self._reader is None:
            return
        records, overrun = self._reader.read(EVENT_BATCH)
        if overrun:
            self.counters["overruns"] += 1
            log.error("conntrack events lost (ENOBUFS): sending every peer a full table")
            if self._read_events:
                # Watch the socket afresh: the poller may have dropped it on the error.
                self._loop.remove_reader(self._reader.fileno())
                self._loop.add_reader(self._reader.fileno(), self._on_events)
            self._schedule_dump(all_peers=True)
        count = len(records) // ct.RECORD_SIZE
        self.counters["events"] += count
        self._measure(count)
        if not count:
            return
        if not self._holding():
            self.counters["events_not_sent"] += count
            return
        if self._dumping:
            # Behind the full table being dumped: sent before its barrier, an entry the dump
            # missed would be swept at its end.
            self._held.append(records)
            self._held_bytes += len(records)
            if self._held_bytes > HELD_MAX:
                self.counters["held_dropped"] += 1
                self._held.clear()
                self._held_bytes = 0
                self._dump_again = True
            return
        for peer in self.channels:
            self._outbox[peer].append((records, False, False))
        self._pump()

    def _watch_events(self) -> None:
        self._watch = self._loop.call_later(EVENT_WATCH, self._watch_events)
        if self._read_events:
            self._on_events()

    def _measure(self, count: int) -> None:
        started, seen = self._events_window
        now = self._loop.time()
        seen += count
        if now - started >= 1.0:
            self.events_per_s = seen / (now - started)
            started, seen = now, 0
        self._events_window = (started, seen)

    # --- frames in ----------------------------------------------------------------------------

    def _on_datagrams(self) -> None:
        sock = self._sock
        now = self._loop.time()
        limit = epoch_limit(self._epoch, now - self._started)
        for _ in range(DATAGRAM_BATCH):
            if sock is not self._sock:
                return
            try:
                data, ancillary, _flags, source = sock.recvmsg(65536, ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.last_error = f"recv: {exc.strerror or exc}"
                break
            if hop_limit(ancillary) < GTSM_TTL:
                self.drops["ttl"] += 1
                continue
            peer = source[0].partition("%")[0]
            channel = self.channels.get(peer)
            if channel is None:
                self.drops["source"] += 1
                continue
            got = channel.receive(data, now, max_epoch=limit)
            if got.dropped:
                self.drops[got.dropped] += 1
            if got.peer_restarted:
                log.warning("conntrack sync: peer %s (re)started; exchanging full tables", peer)
            self._transmit(peer, got.frames)
            for payload, flags in got.records:
                self._apply(peer, payload, flags)
        self._serve_resyncs()
        if any(self._outbox.values()) and self._pump_handle is None:
            self._pump()
        self._rearm()

    def _apply(self, peer: str, payload: bytes, flags: int) -> None:
        count = len(payload) // ct.RECORD_SIZE
        self.counters["records_received"] += count
        if self.hot:
            if payload:
                self._pending_hot.append(payload)
                self._flush_hot()
            return
        if flags & FLAG_RESYNC_BEGIN:
            self._generation[peer] += 1
        generation = self._generation[peer]
        origin = self._origin[peer]
        try:
            self.cache.apply(payload, origin, generation)
        except MemoryError:
            self.counters["cache_full"] += count
            log.error("conntrack cache: out of memory; %d entries not cached", count)
        if flags & FLAG_RESYNC_END:
            swept = self.cache.sweep(origin, generation)
            self.counters["resyncs_received"] += 1
            self.counters["swept"] += swept

    def _flush_hot(self) -> None:
        """Hot standby: one write at a time in the worker, of everything that arrived meanwhile."""
        if self._hot_busy or not self._pending_hot:
            return
        records = b"".join(self._pending_hot)
        self._pending_hot.clear()
        self._hot_busy = True
        future = self._loop.run_in_executor(self._executor, self.writer.write, records)
        future.add_done_callback(self._hot_written)

    def _hot_written(self, future: asyncio.Future) -> None:
        self._hot_busy = False
        try:
            result = future.result()
        except (OSError, TimeoutError, ValueError) as exc:
            self.counters["hot_write_failures"] += 1
            self.last_error = f"hot write: {exc}"
        else:
            self.counters["hot_written"] += result.applied
            for name, count in result.errors.items():
                self.counters[f"hot_error_{name}"] += count
        self._flush_hot()

    def _release_held(self) -> None:
        """The events read while the dump ran, behind it, in the order they came."""
        for records in self._held:
            for peer in self.channels:
                self._outbox[peer].append((records, False, False))
        self._held.clear()
        self._held_bytes = 0

    # --- pacing -----------------------------------------------------------------------------

    def _pump(self) -> None:
        """Hand each peer's channel what it takes now, a bounded amount per loop turn, so that a
        million-entry table never holds the loop (and the adverts) up. While a channel has no
        room, the event socket is not read: the kernel's buffer holds the events, and if it
        overflows, the overrun's full table repairs the peers."""
        if self._pump_handle is not None:
            self._pump_handle.cancel()
            self._pump_handle = None
        now = self._loop.time()
        budget = PUMP_RECORDS
        for peer, box in self._outbox.items():
            channel = self.channels[peer]
            while box and budget > 0:
                records, begin, end = box[0]
                if len(records) > channel.room() and channel.peer_known:
                    break
                box.popleft()
                self._transmit(peer, channel.send(records, now, resync_begin=begin, resync_end=end))
                budget -= len(records) // ct.RECORD_SIZE + 1
        backlog = any(self._outbox.values())
        self._reading(not backlog)
        if backlog:
            # Room comes back with acks; look again soon either way.
            self._pump_handle = self._loop.call_later(0 if budget <= 0 else PUMP_RETRY, self._pump)
        self._rearm()

    def _reading(self, on: bool) -> None:
        if self._reader is None or on == self._read_events:
            return
        self._read_events = on
        if on:
            self._loop.add_reader(self._reader.fileno(), self._on_events)
        else:
            self.counters["reads_paused"] += 1
            self._loop.remove_reader(self._reader.fileno())

    # --- full tables --------------------------------------------------------------------------

    def _serve_resyncs(self) -> None:
        if any(ch.resync_needed for ch in self.channels.values()):
            self._schedule_dump(all_peers=False)

    def _schedule_dump(self, all_peers: bool) -> None:
        if self._dumping:
            if all_peers:
                self._dump_again = True
            return
        self._dumping = True
        self._dump_again = False
        self._dump_all = all_peers
        future = self._loop.run_in_executor(self._executor, self._dump)
        future.add_done_callback(self._dumped)

    def _dump(self) -> bytes:
        started = time.perf_counter()
        records = ct.dump_table(filter=self._filter)
        self.last_dump_seconds = time.perf_counter() - started
        return records

    def _dumped(self, future: asyncio.Future) -> None:
        self._dumping = False
        try:
            records = future.result()
        except OSError as exc:
            self.counters["dump_failures"] += 1
            self.last_error = f"dump: {exc.strerror or exc}"
            self._release_held()
            self._loop.call_later(RETRY_OPEN, self._schedule_dump, self._dump_all)
            return
        chunk = DUMP_CHUNK * ct.RECORD_SIZE
        parts = [records[i:i + chunk] for i in range(0, len(records), chunk)] or [b""]
        for peer, channel in self.channels.items():
            if not (self._dump_all or channel.resync_needed) or not channel.peer_known:
                continue
            self.counters["resyncs_sent"] += 1
            # The full table supersedes whatever waited for this peer; what happens from now on
            # goes behind it, so that no older record of the dump lands after a newer event.
            self._outbox[peer] = deque((part, i == 0, i == len(parts) - 1) for i, part in enumerate(parts))
        self._release_held()
        if self._dump_again:
            self._schedule_dump(all_peers=True)
        self._pump()

    # --- operators' verbs ------------------------------------------------------------------

    def quiet(self, on: bool) -> None:
        """Around a bulk replay, from the worker: stop listening to events, then listen again and
        send every peer our table, since what changed meanwhile went unseen (the gate is still
        closed then, so it is only the replay's own creations). conntrackd's primary-backup.sh
        does the same: commit, then resync and bulk-send."""
        if self._reader is None:
            return
        self._reader.listen(not on)
        if not on:
            self._loop.call_soon_threadsafe(self._schedule_dump, True)

    def run(self, func: Callable, *args) -> asyncio.Future:
        """In the sync's worker, after the writes queued before it."""
        return self._loop.run_in_executor(self._executor, func, *args)

    def request_resync(self) -> int:
        """Ask every peer for its full table (conntrackd -n); returns how many were asked."""
        now = self._loop.time()
        for peer, channel in self.channels.items():
            self._transmit(peer, channel.request_resync(now))
        self._rearm()
        return len(self.channels)

    def bulk_send(self) -> int:
        """Send our full table to every peer now (conntrackd -B)."""
        self._schedule_dump(all_peers=True)
        return len(self.channels)

    def sizing(self, size: dict) -> list[str]:
        return sizing(self.config.expected_entries, size)

    def stats(self) -> dict:
        now = self._loop.time()
        size = ct.table_size()
        warnings = self.sizing(size)
        reader = self._reader
        return {
            "mode": self.config.mode,
            "open": self._sock is not None,
            "last_error": self.last_error,
            "holding": self._holding(),
            "events_per_s": round(self.events_per_s, 1),
            "last_dump_s": round(self.last_dump_seconds, 6),
            "cache_entries": len(self.cache) if self.cache is not None else None,
            "cache_bytes": self.cache.bytes if self.cache is not None else None,
            "kernel": size,
            "counters": dict(self.counters),
            "drops": dict(self.drops),
            "parse": vars(reader.stats) if reader is not None else {},
            "peers": {peer: channel.stats(now) for peer, channel in self.channels.items()},
            "in_sync": all(channel.in_sync(now) for channel in self.channels.values()),
            "warnings": warnings,
        }
