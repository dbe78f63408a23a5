"""Reliable connection-tracking sync with one peer, without I/O (conntrackd's FT-FW, authenticated).

The one idea: a stream of DATA frames belongs to one pair of incarnations,
(our epoch, the peer's epoch). Every frame says which incarnation of its
receiver it is for (`ack_epoch`), so nothing recorded before a restart, or on
the way to another node, is ever taken; when either side restarts, the stream
starts over at seq 1 with a full table (a resync), since the new incarnation
holds nothing. Within a stream, frames are numbered, kept until cumulatively
acked, resent when NACKed or when the ack is late (exponential backoff), and
delivered in order exactly once.

A resync is a barrier. `send(..., resync_begin=True)` supersedes everything
sent before it: the sender forgets those frames, and a receiver that gets the
RESYNC_BEGIN frame skips any gap below it. So every gap is fillable: a
receiver waits only for frames the sender still holds, and a NACK for one it
let go is answered with the barrier.

Driving it (aioquic's pattern): the runtime passes every datagram from the
peer's address to `receive`, sends every frame returned (by `send`, `receive`,
`handle_timer`, `request_resync`) to that address, re-arms one timer at
`get_timer()`, and, whenever `resync_needed` is true, dumps the table and
feeds it through `send` (first call resync_begin=True, last resync_end=True,
in chunks while `room()` allows, each chunk read from the live table when it
is sent, so that no chunk is older than an event already sent). To push a
table unasked (an ENOBUFS overrun, `agentctl conntrack bulk-send`), call
`send` with the same flags. The channel sends RESYNC_REQUEST frames itself:
`request_resync` is the operator's verb (conntrackd -n), the rest it decides
alone: a new or restarted peer, a queue overflow, a request, a peer back from
silence (heard from after `dead_after`, until when everything kept for it was
let go) all show as `resync_needed`.

Everything that arrives is hostile: a frame is checked completely before it
changes anything, and a bad one is dropped and counted under one reason
(syncwire.REASONS or DROP_REASONS); `receive` does not raise.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from agent.core.syncwire import (
    FLAG_ENCRYPTED, FLAG_RESYNC_BEGIN, FLAG_RESYNC_END, HEADER_SIZE, MAC_SIZE, MAX_NACK_RANGES,
    RECORD_SIZE, TAG_SIZE, Sealer, SyncFrame, SyncFrameError, SyncType, decode, encryption, max_records,
    pack_control, pack_data,
)
from agent.core.wire import MAX_FRAME_SIZE, KeyRing, ReplayGuard, Verdict

_RESYNC_FLAGS = FLAG_RESYNC_BEGIN | FLAG_RESYNC_END

DROP_REASONS = frozenset({
    "own_id",  # our own node id: a loop, or a node configured with our id
    "node_id",  # another node than the one this channel's peer is
    "future_epoch",  # an epoch the peer cannot honestly have yet (max_epoch)
    "old_epoch",  # from an incarnation of the peer older than the one we talk to
    "not_ours",  # for another incarnation of us, or for another node
    "replay",  # a control frame older than the replay window (serial)
    "ack",  # acks a DATA seq we never sent
    "nack_range",  # NACKs a DATA seq we never sent
    "duplicate",  # a DATA frame already delivered or buffered, a control frame seen before
    "rx_window",  # a DATA frame too far ahead to buffer; it is resent later
    "plaintext",  # unsealed DATA while the channel is set to encrypt
})
# Records dropped by `send`, by cause (frames' worth of them are counted in records).
SEND_DROPS = ("no_peer", "silent", "overflow")


@dataclass(frozen=True)
class SyncConfig:
    # Frames sent and not yet acked, at most; more wait in the queue.
    window: int = 4096
    # Records waiting for the window, in bytes, at most; past it the queue is
    # dropped and the peer gets a full resync instead.
    queue_bytes: int = 64 * 2**20
    # Out-of-order DATA frames a receiver buffers, at most.
    rx_window: int = 4096
    datagram_size: int = MAX_FRAME_SIZE
    rto: float = 0.2
    rto_max: float = 2.0
    # Oldest unacked frames resent when the ack is late (the rest follow NACKs).
    resend_burst: int = 64
    keepalive: float = 0.5
    ack_every: int = 32
    ack_delay: float = 0.01
    nack_holdoff: float = 0.05
    # Health: not in sync when a frame is unacked, or a gap open, this long.
    lag_limit: float = 2.0
    # A peer silent this long is gone: what was queued for it is dropped and it
    # gets a full resync when heard again (rather than a queue growing for a dead
    # node, and table dumps that only fill it again).
    dead_after: float = 5.0
    encrypt: bool = False

    def __post_init__(self) -> None:
        if self.window < 1 or self.rx_window < 1 or self.resend_burst < 1 or self.ack_every < 1:
            raise ValueError("window, rx_window, resend_burst and ack_every must be at least 1")
        if not 0 < self.rto <= self.rto_max or min(self.keepalive, self.ack_delay, self.nack_holdoff) <= 0:
            raise ValueError("timers must be positive, rto at most rto_max")
        max_records(self.datagram_size, encrypted=self.encrypt)


@dataclass(slots=True)
class Received:
    """What one datagram did. `records` are (payload, flags): a payload is n x 96 bytes,
    flags FLAG_RESYNC_BEGIN / FLAG_RESYNC_END as the sender set them."""

    records: list[tuple[bytes, int]] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)
    # The peer needs a full table from us (the channel's resync_needed, now).
    resync_requested: bool = False
    # The peer came back with a new epoch: both streams started over.
    peer_restarted: bool = False
    # Why the datagram was dropped, or None if it was taken.
    dropped: str | None = None


class SyncChannel:
    """Sync with one peer: both directions, one stream each.

    `epoch` identifies this channel's incarnation to the peer and must be new
    (larger) whenever a channel is created again, e.g. time.time_ns() at
    creation: a peer that sees the same epoch assumes the same stream."""

    def __init__(self, node_id: int, epoch: int, keyring: KeyRing, config: SyncConfig = SyncConfig(),
                 *, peer_node_id: int | None = None) -> None:
        if not 0 < epoch < 2**64:
            raise ValueError("epoch must be a positive u64")
        self._node_id = node_id
        self._epoch = epoch
        self._keys = keyring
        self._config = config
        self._sealer: Sealer | None = encryption(keyring) if config.encrypt else None
        self._chunk = max_records(config.datagram_size, encrypted=config.encrypt) * RECORD_SIZE
        self._overhead = HEADER_SIZE + MAC_SIZE + (TAG_SIZE if config.encrypt else 0)
        self._serial = 0
        self._peer_node = peer_node_id
        self._peer_epoch = 0
        self._last_heard: float | None = None
        self._alive = False
        self._guard = ReplayGuard(max_peers=1)
        # A HELLO is due at once (a time in the past means: now).
        self._last_tx = -config.keepalive
        self._greeted = float("-inf")
        self._resync_needed = False
        self._requesting = False
        self._request_at = 0.0
        self._drops: Counter[str] = Counter()
        self._count: Counter[str] = Counter()
        self._reset_tx()
        self._reset_rx()

    # -- streams ------------------------------------------------------------

    def _reset_tx(self) -> None:
        # Seqs <= _tx_base are gone (acked, or superseded by a barrier); _frames
        # holds _tx_base+1 .. _tx_seq, of which _tx_next .. _tx_seq are still queued.
        self._frames: dict[int, bytes] = {}
        self._sent_at: dict[int, float] = {}
        self._tx_seq = 0
        self._tx_next = 1
        self._tx_base = 0
        self._tx_acked = 0
        self._queued = 0
        self._barrier = 0
        self._rto = self._config.rto
        self._rto_at: float | None = None

    def _reset_rx(self) -> None:
        self._rx_next = 1
        self._rx_high = 0
        self._rx_buf: dict[int, tuple[bytes, int]] = {}
        self._ack_owed = 0
        self._ack_at: float | None = None
        self._nack_at = float("-inf")
        self._gap_since: float | None = None
        self._in_resync = False

    # -- sending ------------------------------------------------------------

    @property
    def resync_needed(self) -> bool:
        """The peer needs our full table: dump it through send(resync_begin/end).

        Only while the peer is heard from: a resync for a silent peer waits until it is back."""
        return self._resync_needed and self._alive

    @property
    def peer_known(self) -> bool:
        return self._peer_epoch != 0

    def room(self) -> int:
        """Bytes of records `send` takes now without overflowing its queue (whole records)."""
        free = self._config.queue_bytes - self._queued
        return max(0, free - free % RECORD_SIZE)

    def send(self, records: bytes, now: float, *, resync_begin: bool = False,
             resync_end: bool = False) -> list[bytes]:
        """Queue `records` (n x 96 bytes) for the peer; returns the frames to send now.

        resync_begin starts a full table and supersedes everything sent before
        (never delivered if not yet); resync_end ends it. An empty `records`
        with a flag still makes a frame. Before the peer is heard from, records
        go nowhere (it gets a full resync when it appears): counted, dropped."""
        size = len(records)
        if size % RECORD_SIZE:
            raise ValueError(f"{size} bytes is not a whole number of {RECORD_SIZE}-byte records")
        if not self._alive:
            self._count["records_dropped_no_peer" if not self._peer_epoch else "records_dropped_silent"] += (
                size // RECORD_SIZE)
            return []
        if resync_begin:
            self._begin_resync()
        if size == 0 and not (resync_begin or resync_end):
            return []
        self._frame_records(records, resync_begin, resync_end)
        self._count["records_sent"] += size // RECORD_SIZE
        if self._queued > self._config.queue_bytes:
            self._overflow()
        return self._transmit(now)

    def _begin_resync(self) -> None:
        """The barrier: forget what is queued or unacked, it is all superseded."""
        self._unqueue()
        for seq in range(self._tx_base + 1, self._tx_next):
            del self._frames[seq]
            self._sent_at.pop(seq, None)
        self._tx_base = self._tx_next - 1
        self._barrier = self._tx_next
        self._rto_at = None
        self._rto = self._config.rto
        self._resync_needed = False
        self._count["resyncs_served"] += 1

    def _unqueue(self) -> None:
        """Take back the frames not yet sent (their seqs were never seen, so they can be reused)."""
        for seq in range(self._tx_next, self._tx_seq + 1):
            del self._frames[seq]
        if self._barrier >= self._tx_next:
            self._barrier = 0
        self._tx_seq = self._tx_next - 1
        self._queued = 0

    def _overflow(self) -> None:
        self._count["records_dropped_overflow"] += self._queued // RECORD_SIZE
        self._count["overflows"] += 1
        self._unqueue()
        self._resync_needed = True

    def _frame_records(self, records: bytes, begin: bool, end: bool) -> None:
        chunk = self._chunk
        size = len(records)
        view = memoryview(records)
        keys, node, epoch, ack, peer, sealer = (
            self._keys, self._node_id, self._epoch, self._rx_next - 1, self._peer_epoch, self._sealer)
        frames = self._frames
        seq = self._tx_seq
        last = max(size - 1, 0) // chunk * chunk
        for offset in range(0, max(size, 1), chunk):
            flags = 0
            if begin and offset == 0:
                flags = FLAG_RESYNC_BEGIN
            if end and offset == last:
                flags |= FLAG_RESYNC_END
            seq += 1
            self._serial += 1
            frames[seq] = pack_data(keys, node, epoch, self._serial, seq, ack, peer, flags,
                                    view[offset:offset + chunk], sealer)
        self._tx_seq = seq
        self._queued += size

    def _transmit(self, now: float) -> list[bytes]:
        """Send queued frames while the window has room."""
        stop = min(self._tx_seq, self._tx_base + self._config.window)
        if self._tx_next > stop:
            return []
        frames, sent_at = self._frames, self._sent_at
        out = [frames[seq] for seq in range(self._tx_next, stop + 1)]
        for seq in range(self._tx_next, stop + 1):
            sent_at[seq] = now
        self._queued -= sum(len(data) for data in out) - len(out) * self._overhead
        self._tx_next = stop + 1
        self._count["frames_sent"] += len(out)
        self._last_tx = now
        if self._rto_at is None:
            self._rto_at = now + self._rto
        # Every DATA frame carries our ack; the last one says as much as an ACK would.
        if self._ack_owed and int.from_bytes(out[-1][32:40], "big") == self._rx_next - 1:
            self._ack_owed, self._ack_at = 0, None
        return out

    def request_resync(self, now: float) -> list[bytes]:
        """Ask the peer for its full table (conntrackd -n); resent until its resync begins."""
        if not self._peer_epoch:
            return []  # when it appears, it sends one anyway
        self._requesting = True
        self._count["resyncs_asked"] += 1
        return [self._request(now)]

    def _request(self, now: float) -> bytes:
        self._request_at = now + self._rto
        return self._control(SyncType.RESYNC_REQUEST, now)

    # -- control frames -----------------------------------------------------

    def _control(self, kind: SyncType, now: float, ranges: tuple[tuple[int, int], ...] = ()) -> bytes:
        """A control frame; every one carries our ack, so it settles what we owe."""
        self._serial += 1
        ack = self._rx_next - 1 if self._peer_epoch else 0
        self._ack_owed, self._ack_at = 0, None
        self._last_tx = now
        self._count[f"{kind.name.lower()}_sent"] += 1
        return pack_control(self._keys, kind, self._node_id, self._epoch, self._serial, self._tx_next - 1,
                            ack, self._peer_epoch, ranges)

    def _nack(self, now: float) -> bytes | None:
        """A NACK of the gaps below the highest seq we know the peer sent, if there are any."""
        ranges: list[tuple[int, int]] = []
        expected = self._rx_next
        for seq in sorted(self._rx_buf):
            if seq > expected:
                ranges.append((expected, seq - 1))
                if len(ranges) == MAX_NACK_RANGES:
                    break
            expected = seq + 1
        if len(ranges) < MAX_NACK_RANGES and self._rx_high >= expected:
            ranges.append((expected, self._rx_high))
        if not ranges:
            return None
        self._nack_at = now + self._config.nack_holdoff
        return self._control(SyncType.NACK, now, tuple(ranges))

    def _gap(self) -> bool:
        return bool(self._rx_buf) or self._rx_high >= self._rx_next

    # -- receiving ----------------------------------------------------------

    def receive(self, data: bytes, now: float, max_epoch: int | None = None) -> Received:
        """Take one datagram from the peer's address; see Received. Never raises."""
        result = Received()
        try:
            frame = decode(data, self._keys, self._sealer)
        except SyncFrameError as error:
            return self._drop(result, error.reason)
        reason = self._refuse(frame, max_epoch)
        if reason is None and frame.ack_epoch:
            reason = self._check_stream(frame)
        if reason is not None:
            return self._drop(result, reason)
        if frame.epoch > self._peer_epoch:
            self._meet(frame, result)
        self._last_heard = now
        self._alive = True
        if frame.ack_epoch == 0:
            # The peer has not heard from us yet: tell it who we are.
            if now - self._greeted >= self._config.ack_delay:
                self._greeted = now
                result.frames.append(self._control(SyncType.HELLO, now))
            result.resync_requested = self.resync_needed
            return result
        self._on_ack(frame.ack, now, result.frames)
        if frame.kind is SyncType.DATA:
            self._on_data(frame, now, result)
        else:
            self._on_control(frame, now, result)
        if self._gap():
            if self._gap_since is None:
                self._gap_since = now
        else:
            self._gap_since = None
        result.resync_requested = self.resync_needed
        return result

    def _drop(self, result: Received, reason: str) -> Received:
        self._drops[reason] += 1
        result.dropped = reason
        result.resync_requested = self.resync_needed
        return result

    def _refuse(self, frame: SyncFrame, max_epoch: int | None) -> str | None:
        """Why a well-formed frame is not for this channel, checked before anything moves."""
        if frame.node_id == self._node_id:
            return "own_id"
        if self._peer_node is not None and frame.node_id != self._peer_node:
            return "node_id"
        if max_epoch is not None and frame.epoch > max_epoch:
            return "future_epoch"
        if frame.epoch < self._peer_epoch:
            return "old_epoch"
        if frame.ack_epoch not in (0, self._epoch):
            return "not_ours"
        if self._sealer is not None and frame.kind is SyncType.DATA and not frame.flags & FLAG_ENCRYPTED:
            return "plaintext"
        return None

    def _check_stream(self, frame: SyncFrame) -> str | None:
        """Why a frame for us is bogus or stale; moves nothing but the replay window.

        From a new incarnation of the peer, it is checked against the stream
        that incarnation will start with, in which we have sent nothing yet."""
        sent = self._tx_next - 1 if frame.epoch == self._peer_epoch else 0
        if frame.ack > sent:
            return "ack"
        if frame.kind is SyncType.NACK and frame.ranges[-1][1] > sent:
            return "nack_range"
        if frame.kind is not SyncType.DATA:
            verdict = self._guard.check(frame.node_id, frame.epoch, frame.serial)
            if verdict is Verdict.DUPLICATE:
                return "duplicate"  # the link doubled it
            if verdict not in (Verdict.NEW, Verdict.REORDERED):
                return "replay"
        return None

    def _meet(self, frame: SyncFrame, result: Received) -> None:
        """A new incarnation of the peer (first contact or restart): both streams start over."""
        result.peer_restarted = self._peer_epoch != 0
        if result.peer_restarted:
            self._count["peer_restarts"] += 1
        self._peer_node = frame.node_id
        self._peer_epoch = frame.epoch
        self._reset_tx()
        self._reset_rx()
        # It holds nothing of ours, and it will offer its own table: no need to ask.
        self._requesting = False
        self._resync_needed = True
        self._greeted = float("-inf")

    def _on_ack(self, ack: int, now: float, out: list[bytes]) -> None:
        if ack <= self._tx_acked:
            return
        self._tx_acked = ack
        if ack > self._tx_base:
            frames, sent_at = self._frames, self._sent_at
            for seq in range(self._tx_base + 1, ack + 1):
                del frames[seq]
                del sent_at[seq]
            self._tx_base = ack
        self._rto = self._config.rto
        self._rto_at = now + self._rto if self._tx_next - 1 > self._tx_base else None
        out.extend(self._transmit(now))

    def _on_data(self, frame: SyncFrame, now: float, result: Received) -> None:
        seq = frame.seq
        self._count["frames_received"] += 1
        if seq < self._rx_next or seq in self._rx_buf:
            self._drops["duplicate"] += 1
            result.dropped = "duplicate"
            # Our ack may have been lost: say it again soon.
            self._ack_owed += 1
            self._ack_at = now if self._ack_at is None else min(self._ack_at, now)
            return
        if frame.flags & FLAG_RESYNC_BEGIN and seq > self._rx_next:
            self._skip_to(seq)
        if seq - self._rx_next >= self._config.rx_window:
            self._drops["rx_window"] += 1
            result.dropped = "rx_window"
            return
        self._rx_high = max(self._rx_high, seq)
        if seq != self._rx_next:
            self._rx_buf[seq] = (frame.payload, frame.flags & _RESYNC_FLAGS)
            if now >= self._nack_at:
                nack = self._nack(now)
                if nack is not None:
                    result.frames.append(nack)
            return
        self._deliver(frame.payload, frame.flags & _RESYNC_FLAGS, result.records)
        buf = self._rx_buf
        while self._rx_next in buf:
            payload, flags = buf.pop(self._rx_next)
            self._deliver(payload, flags, result.records)
        self._ack_owed += 1
        if self._ack_owed >= self._config.ack_every:
            result.frames.append(self._control(SyncType.ACK, now))
        elif self._ack_at is None:
            self._ack_at = now + self._config.ack_delay

    def _skip_to(self, seq: int) -> None:
        """A resync began at `seq`: what the sender sent before it is superseded."""
        self._count["frames_skipped"] += seq - self._rx_next
        self._rx_buf = {s: v for s, v in self._rx_buf.items() if s > seq}
        self._rx_next = seq

    def _deliver(self, payload: bytes, flags: int, records: list[tuple[bytes, int]]) -> None:
        self._rx_next += 1
        self._count["records_received"] += len(payload) // RECORD_SIZE
        if flags & FLAG_RESYNC_BEGIN:
            self._in_resync = True
            self._requesting = False
            self._count["resyncs_received"] += 1
        if flags & FLAG_RESYNC_END:
            self._in_resync = False
        records.append((payload, flags))

    def _on_control(self, frame: SyncFrame, now: float, result: Received) -> None:
        self._count[f"{frame.kind.name.lower()}_received"] += 1
        # Its last DATA seq: a tail we never got shows as a gap.
        high = min(frame.seq, self._rx_next - 1 + self._config.rx_window)
        if high > self._rx_high:
            self._rx_high = high
            if now >= self._nack_at:
                nack = self._nack(now)
                if nack is not None:
                    result.frames.append(nack)
        if frame.kind is SyncType.NACK:
            result.frames.extend(self._resend(frame.ranges))
        elif frame.kind is SyncType.RESYNC_REQUEST:
            # A barrier it has not received yet already answers it (requests are resent).
            if self._barrier <= frame.ack:
                self._resync_needed = True
                self._count["resync_requests"] += 1

    def _resend(self, ranges: tuple[tuple[int, int], ...]) -> list[bytes]:
        """Frames for a NACK; a seq we let go is superseded by the barrier, so send that."""
        out: list[bytes] = []
        frames = self._frames
        barrier_due = False
        superseded = self._tx_acked < self._tx_base  # (acked, base] went at the barrier
        for first, last in ranges:
            # Below the ack it is a stale NACK (it crossed our ack): nothing to do for that part.
            if superseded and first <= self._tx_base and last > self._tx_acked:
                barrier_due = True
            for seq in range(max(first, self._tx_base + 1), last + 1):
                out.append(frames[seq])
        if barrier_due:
            if self._barrier > self._tx_base:
                if not any(first <= self._barrier <= last for first, last in ranges):
                    out.insert(0, frames[self._barrier])
            elif self._barrier <= self._tx_acked:
                # Nothing in flight covers it (cannot happen with our own sends): start one.
                self._resync_needed = True
        self._count["frames_resent"] += len(out)
        return out

    # -- time -----------------------------------------------------------------

    def handle_timer(self, now: float) -> list[bytes]:
        """Resends, NACK retries, delayed acks and keepalives that are due at `now`."""
        out: list[bytes] = []
        if self._alive and now >= (self._last_heard or 0.0) + self._config.dead_after:
            self._on_silence()
        if self._rto_at is not None and now >= self._rto_at:
            out.extend(self._on_timeout(now))
        if self._requesting and now >= self._request_at:
            out.append(self._request(now))
        if self._gap() and now >= self._nack_at:
            nack = self._nack(now)
            if nack is not None:
                out.append(nack)
        if self._ack_at is not None and now >= self._ack_at:
            out.append(self._control(SyncType.ACK, now))
        if now >= self._last_tx + self._config.keepalive:
            out.append(self._control(SyncType.HELLO, now))
        return out

    def _on_silence(self) -> None:
        """The peer is gone for now: let go of everything kept for it; it gets a resync when back."""
        self._alive = False
        self._count["peer_silences"] += 1
        self._unqueue()
        for seq in range(self._tx_base + 1, self._tx_next):
            del self._frames[seq]
            del self._sent_at[seq]
        self._tx_base = self._tx_next - 1
        self._rto_at = None
        self._rto = self._config.rto
        self._resync_needed = True

    def _on_timeout(self, now: float) -> list[bytes]:
        """The ack is late: resend the oldest frames, and a HELLO so the peer sees our top seq."""
        first = self._tx_base + 1
        stop = min(self._tx_next, first + self._config.resend_burst)
        out = [self._frames[seq] for seq in range(first, stop)]
        self._count["timeouts"] += 1
        self._count["frames_resent"] += len(out)
        self._rto = min(self._rto * 2, self._config.rto_max)
        self._rto_at = now + self._rto if out else None
        out.append(self._control(SyncType.HELLO, now))
        return out

    def get_timer(self) -> float | None:
        times = [self._last_tx + self._config.keepalive]
        if self._alive:
            times.append((self._last_heard or 0.0) + self._config.dead_after)
        if self._rto_at is not None:
            times.append(self._rto_at)
        if self._ack_at is not None:
            times.append(self._ack_at)
        if self._requesting:
            times.append(self._request_at)
        if self._gap():
            times.append(self._nack_at)
        return min(times)

    # -- health ---------------------------------------------------------------

    def lag(self, now: float) -> float:
        """Seconds the oldest unacked frame has waited for its ack (0 when none)."""
        sent = self._sent_at.get(self._tx_base + 1)
        return 0.0 if sent is None else max(0.0, now - sent)

    def problems(self, now: float) -> list[str]:
        """Why the peer's copy of our table, or ours of its, is not known to be current."""
        found = []
        if not self._peer_epoch:
            found.append("peer not heard")
        elif self._last_heard is None or now - self._last_heard > self._config.dead_after:
            found.append("peer silent")
        if self._resync_needed:
            found.append("resync pending")
        if self.lag(now) > self._config.lag_limit:
            found.append("acks late")
        if self._requesting or self._in_resync:
            found.append("receiving a resync")
        if self._gap_since is not None and now - self._gap_since > self._config.lag_limit:
            found.append("gap in received stream")
        return found

    def in_sync(self, now: float) -> bool:
        """Nothing pending either way: the health figure to alarm on."""
        return not self.problems(now)

    def stats(self, now: float) -> dict:
        count = self._count
        return {
            "peer_node_id": self._peer_node,
            "peer_epoch": self._peer_epoch,
            "last_heard_s": None if self._last_heard is None else now - self._last_heard,
            "frames_sent": count["frames_sent"],
            "frames_resent": count["frames_resent"],
            "frames_received": count["frames_received"],
            "frames_skipped": count["frames_skipped"],
            "records_sent": count["records_sent"],
            "records_received": count["records_received"],
            "records_dropped": {cause: count[f"records_dropped_{cause}"] for cause in SEND_DROPS},
            "acks_sent": count["ack_sent"],
            "acks_received": count["ack_received"],
            "nacks_sent": count["nack_sent"],
            "nacks_received": count["nack_received"],
            "hellos_sent": count["hello_sent"],
            "timeouts": count["timeouts"],
            "overflows": count["overflows"],
            "peer_restarts": count["peer_restarts"],
            "resyncs_asked": count["resyncs_asked"],
            "resyncs_requested_by_peer": count["resync_requests"],
            "resyncs_served": count["resyncs_served"],
            "resyncs_received": count["resyncs_received"],
            "drops": dict(self._drops),
            "unacked": self._tx_next - 1 - self._tx_base,
            "queued_frames": self._tx_seq - self._tx_next + 1,
            "queued_bytes": self._queued,
            "rx_buffered": len(self._rx_buf),
            "lag_s": self.lag(now),
            "rto_s": self._rto,
            "resync_needed": self._resync_needed,
            "peer_alive": self._alive,
            "peer_silences": count["peer_silences"],
            "in_sync": self.in_sync(now),
            "problems": self.problems(now),
        }
