"""Heartbeat frame codec: an HMAC-SHA256 authenticated datagram, 64 bytes in version 1.

The one idea: every byte that arrives is hostile. `decode` either returns a
`Frame` whose fields are all in range or raises `FrameError` with one reason
out of a fixed set, which the node uses as its drop-counter key. Replay is a
separate step (`ReplayGuard`) because it needs per-sender memory.

Layout, big-endian (32-byte header, then the MAC over that header):

    0  magic  b"DP"          8  node_id             u32
    2  version u8 (= 1)     12  advert_interval_us  u32
    3  type    u8           16  epoch               u64  sender start, ns
    4  key_id  u8           24  seq                 u64  per epoch
    5  state   u8           32  hmac-sha256         32 bytes
    6  priority u8
    7  flags   u8  (bit 0 YIELD: "I will not take over while another can")

Version 2 (a node with active/active blocks) puts the ownership views of its
blocks (agent.core.views) between the header and the MAC, which then covers
both; at most MAX_FRAME_SIZE bytes, so that a frame is never fragmented. A
frame without views is sent as version 1, and both are accepted, so nodes can
be upgraded one at a time.

Magic, version and key id are checked before the MAC (they are needed to
pick the key); type, field ranges and views after it, so an unauthenticated
sender can only ever cause "short", "long", "magic", "version", "key_id" or
"auth".
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field
from enum import Enum, IntEnum

from agent.core.states import State
from agent.core.views import BlockView, decode_views, encode_views

MAGIC = b"DP"
VERSION = 1
VERSION_VIEWS = 2
_HEADER = struct.Struct(">2sBBBBBBIIQQ")
MAC_SIZE = 32
FRAME_SIZE = _HEADER.size + MAC_SIZE
# An IPv6 datagram that fits a 1,500-byte MTU unfragmented.
MAX_FRAME_SIZE = 1500 - 40 - 8

FLAG_YIELD = 0x01
_KNOWN_FLAGS = FLAG_YIELD

MIN_INTERVAL_US = 1_000
MAX_INTERVAL_US = 60_000_000

REASONS = frozenset({"short", "long", "magic", "version", "type", "key_id", "auth", "field", "views"})


class FrameType(IntEnum):
    ADVERT = 1
    RESIGN = 2


class FrameError(Exception):
    """A datagram that is not a valid frame; `reason` is one of REASONS."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class KeyRing:
    """Pre-shared keys by id: the first one signs, any of them verifies (rotation)."""

    keys: tuple[tuple[int, bytes], ...]
    _by_id: dict[int, bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a key ring needs at least one key")
        by_id: dict[int, bytes] = {}
        for key_id, key in self.keys:
            if not 0 <= key_id <= 255:
                raise ValueError(f"key id {key_id} is not a u8")
            if not key:
                raise ValueError(f"key {key_id} is empty")
            if key_id in by_id:
                raise ValueError(f"key id {key_id} given twice")
            by_id[key_id] = bytes(key)
        object.__setattr__(self, "_by_id", by_id)

    @property
    def send_id(self) -> int:
        return self.keys[0][0]

    def get(self, key_id: int) -> bytes | None:
        return self._by_id.get(key_id)


@dataclass(frozen=True)
class Frame:
    kind: FrameType
    node_id: int
    state: State
    priority: int
    advert_interval_us: int
    epoch: int
    seq: int
    flags: int = 0
    # Ownership views of active/active blocks (version 2 only).
    views: tuple[BlockView, ...] = ()

    @property
    def advert_interval(self) -> float:
        return self.advert_interval_us / 1e6


def _fields_valid(frame: Frame) -> bool:
    return (
        1 <= frame.priority <= 254
        and frame.flags & ~_KNOWN_FLAGS == 0
        and MIN_INTERVAL_US <= frame.advert_interval_us <= MAX_INTERVAL_US
        and 0 <= frame.node_id < 2**32
        and 0 <= frame.epoch < 2**64
        and 0 <= frame.seq < 2**64
        # A node that resigns says what it became, which is never MASTER.
        and not (frame.kind is FrameType.RESIGN and frame.state is State.MASTER)
    )


def _mac(key: bytes, header: bytes) -> bytes:
    return hmac.new(key, header, hashlib.sha256).digest()


def encode(frame: Frame, keyring: KeyRing) -> bytes:
    """Serialise and sign with the ring's first key."""
    if not _fields_valid(frame):
        raise ValueError(f"frame field out of range: {frame}")
    signed = _HEADER.pack(
        MAGIC, VERSION_VIEWS if frame.views else VERSION, frame.kind, keyring.send_id, frame.state,
        frame.priority, frame.flags, frame.node_id, frame.advert_interval_us, frame.epoch, frame.seq,
    ) + (encode_views(frame.views) if frame.views else b"")
    if len(signed) + MAC_SIZE > MAX_FRAME_SIZE:
        raise ValueError(f"a frame of {len(signed) + MAC_SIZE} bytes is over {MAX_FRAME_SIZE}")
    return signed + _mac(keyring.get(keyring.send_id) or b"", signed)


def decode(data: bytes, keyring: KeyRing) -> Frame:
    """Parse and authenticate one datagram; raises only FrameError."""
    if len(data) < FRAME_SIZE:
        raise FrameError("short")
    if len(data) > MAX_FRAME_SIZE:
        raise FrameError("long")
    data = bytes(data)
    (magic, version, kind, key_id, state, priority, flags,
     node_id, interval_us, epoch, seq) = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FrameError("magic")
    if version not in (VERSION, VERSION_VIEWS):
        raise FrameError("version")
    if version == VERSION and len(data) > FRAME_SIZE:
        raise FrameError("long")
    if version == VERSION_VIEWS and len(data) == FRAME_SIZE:
        raise FrameError("short")
    key = keyring.get(key_id)
    if key is None:
        raise FrameError("key_id")
    signed, mac = data[:-MAC_SIZE], data[-MAC_SIZE:]
    if not hmac.compare_digest(mac, _mac(key, signed)):
        raise FrameError("auth")
    if kind not in FrameType._value2member_map_:
        raise FrameError("type")
    if state not in State._value2member_map_:
        raise FrameError("field")
    frame = Frame(FrameType(kind), node_id, State(state), priority, interval_us, epoch, seq, flags)
    if not _fields_valid(frame):
        raise FrameError("field")
    if version == VERSION_VIEWS:
        try:
            views = decode_views(signed[_HEADER.size:], node_id, epoch)
        except ValueError:
            raise FrameError("views") from None
        frame = Frame(frame.kind, node_id, frame.state, priority, interval_us, epoch, seq, flags, views)
    return frame


class Verdict(Enum):
    NEW = "new"  # the newest frame from its sender so far
    REORDERED = "reordered"  # first copy, but older than one already seen: accept, do not act on
    DUPLICATE = "duplicate"
    REPLAY = "replay"
    FUTURE_EPOCH = "future_epoch"  # an epoch no honest peer can have yet: dropped, nothing kept
    TOO_MANY_PEERS = "too_many_peers"  # a new sender while MAX_PEERS are tracked: dropped


WINDOW = 64
_WINDOW_MASK = (1 << WINDOW) - 1

# Epochs are wall-clock nanoseconds at the sender's start, so a peer's epoch can
# exceed our own start time plus our uptime only by the skew between the two
# clocks. Ten minutes: NTP-synced nodes agree within milliseconds, and an RTC
# left unsynced for months (drift ~2 s/day) or a clock set by hand stays well
# within it; a clock hours off (an RTC kept in local time) does not, and shows
# as future_epoch drops. It is also how far one forged frame can push a
# sender's epoch ahead: its genuine frames are replays until the caller
# forgets it or it restarts that much later.
EPOCH_TOLERANCE_NS = 10 * 60 * 10**9

# A cluster has a handful of nodes; this only bounds the memory that signed
# frames carrying thousands of node ids can take.
MAX_PEERS = 64


def epoch_limit(own_epoch: int, elapsed_s: float) -> int:
    """The newest epoch a peer can honestly have, `elapsed_s` after our own start.

    Pass it as `ReplayGuard.check(..., max_epoch=...)`. It trusts our own
    clock: a node that started with its clock (and epoch file) behind by more
    than the tolerance refuses its peers' frames."""
    return own_epoch + int(elapsed_s * 1e9) + EPOCH_TOLERANCE_NS


@dataclass
class _Window:
    """IPsec-style anti-replay window: bit i of `seen` stands for seq `top - i`.

    Every update is a shift of at most WINDOW bits, so a huge jump in seq costs
    no more than a step of one."""

    epoch: int
    top: int
    seen: int = 1

    def check(self, seq: int) -> Verdict:
        if seq > self.top:
            jump = seq - self.top
            kept = (self.seen << jump) & _WINDOW_MASK if jump < WINDOW else 0
            self.seen, self.top = kept | 1, seq
            return Verdict.NEW
        offset = self.top - seq
        if offset >= WINDOW:
            return Verdict.REPLAY
        if self.seen >> offset & 1:
            return Verdict.DUPLICATE
        self.seen |= 1 << offset
        return Verdict.REORDERED


class ReplayGuard:
    """Per-sender replay windows keyed by node id.

    The same frame over two heartbeat links is a DUPLICATE (benign); an older
    epoch or a seq that fell out of the window is a REPLAY; a first copy older
    than the newest is REORDERED, so a late advert cannot roll back what the
    receiver knows of the sender. A newer epoch means the sender restarted, so
    its window starts over. Call only with frames that passed `decode`, so that
    a forger cannot move a window.

    Epochs only go forward, so one signed frame with a far-future epoch would
    turn every later genuine frame of that sender into a replay: with
    `max_epoch` (see `epoch_limit`) such a frame is FUTURE_EPOCH and changes
    nothing. At most `max_peers` senders are tracked; a new one beyond that is
    TOO_MANY_PEERS rather than evicting a live sender, whose window an attacker
    could otherwise reset by flooding node ids. The caller frees a slot with
    `forget` when it considers a sender gone, which also forgets what was seen
    of it: until that sender is heard again, a recording of its frames plays
    back as new.
    """

    def __init__(self, *, max_peers: int = MAX_PEERS) -> None:
        self._max_peers = max_peers
        self._windows: dict[int, _Window] = {}

    def check(self, node_id: int, epoch: int, seq: int, *, max_epoch: int | None = None) -> Verdict:
        """Classify one authenticated frame and remember it; O(1) whatever the values."""
        if max_epoch is not None and epoch > max_epoch:
            return Verdict.FUTURE_EPOCH
        window = self._windows.get(node_id)
        if window is None and len(self._windows) >= self._max_peers:
            return Verdict.TOO_MANY_PEERS
        if window is None or epoch > window.epoch:
            self._windows[node_id] = _Window(epoch, seq)
            return Verdict.NEW
        if epoch < window.epoch:
            return Verdict.REPLAY
        return window.check(seq)

    def forget(self, node_id: int) -> None:
        """Stop tracking a sender (unknown ones are fine), freeing its slot."""
        self._windows.pop(node_id, None)
