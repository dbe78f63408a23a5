"""VRRP/CARP-like election of the node that holds the address blocks, without I/O.

The runtime feeds bytes, events and `now` in, drains actions out, and calls
`handle_timer` at `get_timer()` (aioquic's pattern). Every state change goes
through TRANSITIONS, the one table of what may follow what, and through
`_change`, the one place with the side effects of leaving and entering MASTER,
so every block's TakeBlock and ReleaseBlock pair up by construction.

Ranking is (priority, node_id), higher wins. A backup believes peer P is
master until P's last MASTER advert + k x P's advertised interval, where k
is dead_multiplier on a clean link and grows with the loss measured on P's
adverts (core.loss), or until P says otherwise (RESIGN, or an advert with another
state). When no master is believed, the best live backup takes over at once
and each worse one waits one advert interval per better live backup.

Preemption suppression (after FAILOVER or self-fencing): the node will not
preempt until it next becomes master by the ordinary route (the master it
handed over to dies or resigns). While suppressed it sets FLAG_YIELD in its
frames, so peers do not count it as a better backup to wait for.

Entering BACKUP starts a quiet time of one dead interval (no master yet
heard: do not grab the blocks); hearing any MASTER advert ends it. A backup
told its loop stalled waits one interval before a takeover, so that frames
queued during the stall are read first. Late (reordered) frames count as
received but never roll back what we know of their sender.

A frame with our own node id but another epoch is another node configured
with our id: both go FAULT until it has been silent for a dead interval. A
master that hears a lower-ranked master, a resign, or a peer it had given up
for dead (a healed split brain, whoever yields first), or sees a heartbeat
link come back, announces its blocks again, at most once per
REANNOUNCE_EVERY: the neighbours may have followed the other node meanwhile.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from enum import Enum

from agent.core.actions import Action, Announce, ReleaseBlock, SendFrame, StateChanged, TakeBlock
from agent.core.events import (
    AdminCommand, AdminVerb, CarrierLost, Event, LinkChanged, LinkRole, LoopStalled, Shutdown,
)
from agent.core.limits import (
    ADVERT_INTERVAL, DEAD_INTERVAL_MAX, DEAD_MULTIPLIER, FALSE_TAKEOVER_EVERY, NODE_ID, PREEMPT_DELAY, PRIORITY,
)
from agent.core.links import NO_CARRIER
from agent.core.loss import LossEstimate, dead_multiplier
from agent.core.sharing import SharedBlock, Sharing
from agent.core.states import State
from agent.core.wire import (
    FLAG_YIELD, Frame, FrameError, FrameType, KeyRing,
    ReplayGuard, Verdict, decode, encode, epoch_limit,
)

# Re-announcements after a heal or a link's return, at most this often (seconds).
REANNOUNCE_EVERY = 1.0
# Adverts of slack after k missed ones before a peer counts as dead (see _Peer.dead_after).
TIE_MARGIN = 0.25


class Input(Enum):
    """What can move a node from one state to another (the table's columns)."""

    START = "start"
    MASTER_DOWN = "master down"
    PREEMPT = "preempt"
    BETTER_MASTER = "better master"
    STALLED = "loop stalled"
    FAILOVER = "failover"
    MAINT_ON = "maintenance on"
    MAINT_OFF = "maintenance off"
    MAINT_OFF_FAULTY = "maintenance off, link down"
    LINK_FAULT = "link fault"
    DUPLICATE_ID = "duplicate node id"
    LINKS_OK = "links ok"
    SHUTDOWN = "shutdown"


_I, _B, _M, _F, _MT = State.INIT, State.BACKUP, State.MASTER, State.FAULT, State.MAINTENANCE

TRANSITIONS: dict[tuple[State, Input], State] = {
    (_I, Input.START): _B,
    (_I, Input.LINK_FAULT): _F,
    (_B, Input.MASTER_DOWN): _M,
    (_B, Input.PREEMPT): _M,
    (_M, Input.BETTER_MASTER): _B,
    (_M, Input.STALLED): _B,
    (_M, Input.FAILOVER): _B,
    (_B, Input.LINK_FAULT): _F,
    (_M, Input.LINK_FAULT): _F,
    (_F, Input.LINKS_OK): _B,
    (_I, Input.DUPLICATE_ID): _F,
    (_B, Input.DUPLICATE_ID): _F,
    (_M, Input.DUPLICATE_ID): _F,
    (_B, Input.MAINT_ON): _MT,
    (_M, Input.MAINT_ON): _MT,
    (_F, Input.MAINT_ON): _MT,
    (_MT, Input.MAINT_OFF): _B,
    (_MT, Input.MAINT_OFF_FAULTY): _F,
    (_B, Input.SHUTDOWN): _I,
    (_M, Input.SHUTDOWN): _I,
    (_F, Input.SHUTDOWN): _I,
    (_MT, Input.SHUTDOWN): _I,
}
"""(state, input) -> next state. A pair that is absent means: ignore the input."""


@dataclass(frozen=True)
class ElectionConfig:
    node_id: int
    priority: int
    preempt: bool = True
    preempt_delay: float = 0.0
    advert_interval: float = 0.05
    dead_multiplier: int = 3
    # Loss-tolerant detection: widen a lossy peer's dead interval up to this many
    # seconds so that false takeovers stay rarer than one per `false_takeover_every`.
    dead_interval_max: float = 1.0
    false_takeover_every: float = 86400.0

    def __post_init__(self) -> None:
        for name, (low, high) in (("node_id", NODE_ID), ("priority", PRIORITY), ("preempt_delay", PREEMPT_DELAY),
                                  ("advert_interval", ADVERT_INTERVAL), ("dead_multiplier", DEAD_MULTIPLIER),
                                  ("dead_interval_max", DEAD_INTERVAL_MAX),
                                  ("false_takeover_every", FALSE_TAKEOVER_EVERY)):
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name} {getattr(self, name)} not in {low}..{high}")

    @property
    def dead_interval(self) -> float:
        return self.dead_multiplier * self.advert_interval


@dataclass
class _Peer:
    """What we last heard from one other node (current epoch)."""

    node_id: int
    epoch: int
    state: State
    priority: int
    interval: float
    flags: int
    last_seen: float
    master_until: float | None = None
    lost_why: str = ""
    links: dict[str, float] = field(default_factory=dict)
    multiplier: int = 3
    loss: LossEstimate = field(default_factory=LossEstimate)
    link_loss: dict[str, LossEstimate] = field(default_factory=dict)

    @property
    def rank(self) -> tuple[int, int]:
        return (self.priority, self.node_id)

    @property
    def dead_after(self) -> float:
        """Silence after which this peer counts as dead, from its own measured loss.

        Plus a quarter interval: without it the k-th advert after the last one heard
        arrives exactly at the deadline, and k - 1 lost adverts are a coin toss
        between the frame and the takeover (VRRP's skew time covers the same tie)."""
        return (self.multiplier + TIE_MARGIN) * self.interval


class Node:
    """One node's election state machine; see the module docstring."""

    def __init__(self, config: ElectionConfig, keys: KeyRing, epoch: int, blocks: tuple[str, ...] = (),
                 sharing: Sharing | None = None) -> None:
        self._config = config
        self._blocks = tuple(blocks)
        # Active/active blocks: held while this node serves, buckets by ownership.
        self._sharing = sharing
        self._share_after = float("inf")
        self._keys = keys
        self._epoch = epoch
        self._seq = 0
        self._state = State.INIT
        self._actions: list[Action] = []
        self._links: dict[str, tuple[LinkRole, bool, str]] = {}
        self._peers: dict[int, _Peer] = {}
        self._replay = ReplayGuard()
        self._drops: Counter[str] = Counter()
        self._counters: Counter[str] = Counter(
            frames_sent=0, frames_received=0, duplicates=0, reordered=0, views_left_out=0)
        self._now = 0.0
        self._next_advert: float | None = None
        self._quiet_until = 0.0
        self._hold_until = 0.0
        self._preempt_since: float | None = None
        self._suppressed = False
        self._last: tuple[State, State, str, float] | None = None
        self._started = 0.0
        self._duplicate: tuple[int, float] | None = None  # (the other epoch, heard last)
        self._reannounced = float("-inf")

    # -- public API ---------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def rank(self) -> tuple[int, int]:
        return (self._config.priority, self._config.node_id)

    def start(self, now: float) -> None:
        """INIT -> BACKUP, or FAULT if a link it needs is already down."""
        self._now = now
        self._started = now
        fault = self._fault_reason()
        if fault:
            self._fire(Input.LINK_FAULT, fault, now)
        else:
            self._fire(Input.START, "started", now)

    def receive_datagram(self, data: bytes, link: str, now: float) -> None:
        self._now = now
        if self._state is State.INIT:
            return
        try:
            frame = decode(data, self._keys)
        except FrameError as error:
            self._drops[error.reason] += 1
            return
        if frame.node_id == self._config.node_id:
            self._drops["own_id"] += 1
            if frame.epoch != self._epoch:
                self._on_duplicate_id(frame.epoch, now)
            return
        limit = epoch_limit(self._epoch, now - self._started)
        verdict = self._replay.check(frame.node_id, frame.epoch, frame.seq, max_epoch=limit)
        if verdict in (Verdict.REPLAY, Verdict.FUTURE_EPOCH, Verdict.TOO_MANY_PEERS):
            self._drops[verdict.value] += 1
            return
        if verdict in (Verdict.DUPLICATE, Verdict.REORDERED):
            self._counters["duplicates" if verdict is Verdict.DUPLICATE else "reordered"] += 1
            peer = self._peers[frame.node_id]
            peer.links[link] = now
            peer.link_loss.setdefault(link, LossEstimate()).observe(frame.seq)
            return
        self._counters["frames_received"] += 1
        known = self._peers.get(frame.node_id)
        returned = known is not None and not self._live(known, now)
        peer = self._learn(frame, link, now)
        if self._sharing is not None:
            self._sharing.hear(frame.node_id, frame.views)
        self._react(peer, now)
        if self._state is State.MASTER and (returned or frame.kind is FrameType.RESIGN):
            # It may have held the blocks where we could not hear it, and told the
            # neighbours so; it may also yield before we ever hear it as a master.
            self._reannounce(f"heal: peer {peer.node_id} heard again" if returned
                             else f"heal: peer {peer.node_id} resigned", now)
        self._evaluate(now)
        self._share(f"heard node {frame.node_id}", now)

    def receive(self, event: Event, now: float) -> None:
        self._now = now
        if isinstance(event, LinkChanged):
            self._on_link(event, now)
        elif isinstance(event, CarrierLost):
            self._on_carrier_lost(event.link, now)
        elif isinstance(event, LoopStalled):
            self._on_stall(event.lag, now)
        elif isinstance(event, AdminCommand):
            self._on_admin(event.verb, now)
        elif isinstance(event, Shutdown):
            self._fire(Input.SHUTDOWN, "shutdown", now)
        self._share(type(event).__name__, now)

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self._state is State.INIT:
            return
        ends = self._duplicate_ends()
        if ends is not None and now >= ends:
            self._duplicate = None
            self._on_link_state(f"node id {self._config.node_id} no longer used by another node", now)
        if self._next_advert is not None and now >= self._next_advert:
            self._send(FrameType.ADVERT)
            following = self._next_advert + self._config.advert_interval
            self._next_advert = following if following > now else now + self._config.advert_interval
        self._evaluate(now)
        self._share("timer", now)

    def set_keys(self, keys: KeyRing) -> None:
        """Key rotation on reload: frames are sent with the new first key from now on."""
        self._keys = keys

    def set_blocks(self, blocks: tuple[str, ...], now: float) -> None:
        """The configured blocks changed (reload): a master takes the new ones and
        releases the ones that are gone; a block that stays is not touched."""
        self._now = now
        old, self._blocks = self._blocks, tuple(blocks)
        if self._state is not State.MASTER:
            return
        self._actions.extend(ReleaseBlock(name, "reload: block removed") for name in old if name not in blocks)
        self._actions.extend(TakeBlock(name, "reload: block added") for name in blocks if name not in old)

    def buckets_applied(self, name: str, buckets: Collection[int]) -> None:
        """The kernel accepts exactly these buckets of active/active block `name` now; a
        release it applied is advertised at once, for the peer waiting to claim."""
        if self._sharing is not None and self._sharing.applied(name, buckets) and self._state is not State.INIT:
            self._send(FrameType.ADVERT)

    def shared_block_taken_again(self, name: str, now: float) -> None:
        """A reload replaced a held active/active block: its share is handed over again."""
        if self._sharing is not None:
            self._sharing.taken_again(name)
            self._share("reload", now)

    def set_shared_blocks(self, blocks: Collection[SharedBlock], now: float) -> None:
        """The configured active/active blocks changed (reload)."""
        if self._sharing is not None:
            self._actions.extend(self._sharing.set_blocks(blocks))
            self._share("reload", now)

    def get_timer(self) -> float | None:
        if self._state is State.INIT:
            return None
        share = self._share_after if self._sharing is not None and self._share_after > self._now else None
        times = [t for t in (self._next_advert, self._takeover_deadline(), self._duplicate_ends(), share)
                 if t is not None]
        return min(times) if times else None

    def actions(self) -> list[Action]:
        drained, self._actions = self._actions, []
        return drained

    # -- transitions --------------------------------------------------------

    def _fire(self, what: Input, reason: str, now: float) -> bool:
        new = TRANSITIONS.get((self._state, what))
        if new is None:
            return False
        self._change(new, reason, now)
        return True

    def _change(self, new: State, reason: str, now: float) -> None:
        old = self._state
        self._state = new
        if old is State.MASTER:
            # The resign goes out first: the peer can start its takeover at once.
            self._send(FrameType.RESIGN)
        self._last = (old, new, reason, now)
        # StateChanged before the releases, so they are filed under this transition.
        self._actions.append(StateChanged(old, new, reason))
        if old is State.MASTER:
            self._actions.extend(ReleaseBlock(name, reason) for name in self._blocks)
        self._preempt_since = None
        if new is State.INIT:
            self._next_advert = None
            return
        if new is State.MASTER:
            self._suppressed = False
            self._actions.extend(TakeBlock(name, reason) for name in self._blocks)
        if new is State.BACKUP:
            self._quiet_until = now + self._config.dead_interval
        if new is State.BACKUP and old in (State.INIT, State.FAULT):
            # Out of touch until now: hear every peer's view before claiming a bucket, and
            # hold off another preempt_delay, as a recovered node does before it preempts.
            self._share_after = now + self._config.dead_interval + self._config.preempt_delay
        if old is not State.MASTER:
            self._send(FrameType.ADVERT)
        self._next_advert = now + self._config.advert_interval
        self._share(reason, now)

    # -- inputs -------------------------------------------------------------

    def _on_link(self, event: LinkChanged, now: float) -> None:
        before = self._links.get(event.link)
        self._links[event.link] = (event.role, event.up, event.reason)
        if self._state is State.INIT:
            return
        returned = event.up and event.reason != NO_CARRIER and before is not None and (
            not before[1] or before[2] == NO_CARRIER)
        if returned and self._state is State.MASTER:
            self._reannounce(f"link {event.link} back", now)
        self._on_link_state(f"link {event.link} up, all links up", now)

    def _on_link_state(self, ok_reason: str, now: float) -> None:
        fault = self._fault_reason()
        if fault:
            self._fire(Input.LINK_FAULT, fault, now)
        else:
            self._fire(Input.LINKS_OK, ok_reason, now)

    def _on_duplicate_id(self, epoch: int, now: float) -> None:
        self._duplicate = (epoch, now)
        if self._state is not State.INIT:
            self._fire(Input.DUPLICATE_ID, self._fault_reason(), now)

    def _duplicate_ends(self) -> float | None:
        if self._duplicate is None:
            return None
        return self._duplicate[1] + self._config.dead_interval

    def _reannounce(self, why: str, now: float) -> None:
        if now - self._reannounced < REANNOUNCE_EVERY:
            return
        self._reannounced = now
        self._actions.extend(Announce(name, why) for name in self._blocks)

    def _on_carrier_lost(self, link: str, now: float) -> None:
        """A master no longer reachable over any link it was recently heard on is down now:
        waiting out the dead interval would only delay the same conclusion."""
        for peer in self._peers.values():
            peer.links.pop(link, None)
            if peer.master_until is None or peer.master_until <= now:
                continue
            # A link that is down at our end reaches nobody, however recently heard on.
            recent = [n for n, t in peer.links.items()
                      if now - t < peer.dead_after
                      and self._links.get(n, (LinkRole.HEARTBEAT, True, ""))[1]]
            if not recent:
                peer.master_until = now
                peer.lost_why = f"master {peer.node_id} unreachable: carrier lost on {link}"
        if self._state is not State.INIT:
            self._evaluate(now)

    def _on_stall(self, lag: float, now: float) -> None:
        cfg = self._config
        if self._state is State.BACKUP:
            # Frames queued during the stall are still unread: read them first.
            self._hold_until = now + cfg.advert_interval
            return
        if self._state is State.MASTER and lag >= cfg.dead_interval - cfg.advert_interval:
            self._suppressed = True
            self._fire(Input.STALLED, f"self-fence: loop stalled {lag:.3f} s", now)

    def _on_admin(self, verb: AdminVerb, now: float) -> None:
        if verb is AdminVerb.FAILOVER:
            if self._state is State.MASTER:
                self._suppressed = True
            self._fire(Input.FAILOVER, "admin failover", now)
        elif verb is AdminVerb.MAINTENANCE_ON:
            self._fire(Input.MAINT_ON, "admin maintenance on", now)
        elif verb is AdminVerb.MAINTENANCE_OFF:
            fault = self._fault_reason()
            if fault:
                self._fire(Input.MAINT_OFF_FAULTY, f"admin maintenance off; {fault}", now)
            else:
                self._fire(Input.MAINT_OFF, "admin maintenance off", now)

    def _fault_reason(self) -> str:
        """Why this node must not hold the blocks now, or "" if it may."""
        if self._duplicate is not None:
            return f"duplicate node id {self._config.node_id}: another node (epoch {self._duplicate[0]}) sends with it"
        for name, (role, up, why) in sorted(self._links.items()):
            if role is LinkRole.BLOCK and not up:
                return f"block link {name} down" + (f": {why}" if why else "")
        heartbeats = sorted(n for n, (role, _, _) in self._links.items() if role is LinkRole.HEARTBEAT)
        if heartbeats and not any(self._links[n][1] for n in heartbeats):
            return f"all heartbeat links down ({', '.join(heartbeats)})"
        return ""

    # -- frames -------------------------------------------------------------

    def _learn(self, frame: Frame, link: str, now: float) -> _Peer:
        peer = self._peers.get(frame.node_id)
        if peer is None:
            peer = _Peer(frame.node_id, frame.epoch, frame.state, frame.priority,
                         frame.advert_interval, frame.flags, now)
            self._peers[frame.node_id] = peer
        elif frame.epoch != peer.epoch:
            peer.links.clear()
            peer.loss.restart()
            for estimate in peer.link_loss.values():
                estimate.restart()
        peer.epoch, peer.state, peer.priority = frame.epoch, frame.state, frame.priority
        peer.interval, peer.flags, peer.last_seen = frame.advert_interval, frame.flags, now
        peer.links[link] = now
        peer.loss.observe(frame.seq)
        peer.link_loss.setdefault(link, LossEstimate()).observe(frame.seq)
        cfg = self._config
        peer.multiplier = dead_multiplier(peer.loss.rate, peer.interval, cfg.dead_multiplier,
                                          cfg.dead_interval_max, cfg.false_takeover_every)
        if frame.kind is FrameType.ADVERT and frame.state is State.MASTER:
            peer.master_until = now + peer.dead_after
            peer.lost_why = ""
            # A master is heard: no reason left to sit out the start-up quiet time.
            self._quiet_until = min(self._quiet_until, now)
        elif peer.master_until is not None and peer.master_until > now:
            peer.master_until = now
            peer.lost_why = (f"resign from {peer.node_id}" if frame.kind is FrameType.RESIGN
                             else f"master {peer.node_id} now {frame.state.name}")
        return peer

    def _react(self, peer: _Peer, now: float) -> None:
        if self._state is not State.MASTER or peer.master_until is None or peer.master_until <= now:
            return
        if peer.rank > self.rank:
            self._fire(Input.BETTER_MASTER,
                       f"master {peer.node_id} (prio {peer.priority}) outranks us "
                       f"(prio {self._config.priority})", now)
        else:
            self._reannounce(f"heal: lower-ranked master {peer.node_id} heard", now)

    # -- backup decisions ---------------------------------------------------

    def _live(self, peer: _Peer, now: float) -> bool:
        return now - peer.last_seen < peer.dead_after

    def _live_masters(self, now: float) -> list[_Peer]:
        return [p for p in self._peers.values() if p.master_until is not None and p.master_until > now]

    def _better_backups(self, now: float) -> int:
        """Live backups that outrank us and intend to take over: each costs one interval."""
        return sum(
            1 for p in self._peers.values()
            if p.state is State.BACKUP and not p.flags & FLAG_YIELD
            and p.rank > self.rank and self._live(p, now)
        )

    def _lost_master(self) -> tuple[float, str]:
        """Since when no master is believed, and why (for the transition reason)."""
        ended = [(p.master_until, p) for p in self._peers.values() if p.master_until is not None]
        until, last = max(ended, key=lambda e: e[0], default=(0.0, None))
        if last is None or until <= self._quiet_until:
            return self._quiet_until, f"no master heard for {self._config.dead_interval:.3f} s"
        why = last.lost_why or (f"peer {last.node_id} (prio {last.priority}) silent for "
                                f"{until - last.last_seen:.3f} s")
        return until, why

    def _takeover_deadline(self) -> float | None:
        if self._state is not State.BACKUP:
            return None
        now = self._now
        masters = self._live_masters(now)
        if masters:
            deadline = max(p.master_until or 0.0 for p in masters)
            if self._preempt_since is not None:
                deadline = min(deadline, self._preempt_since + self._config.preempt_delay)
            return deadline
        since, _ = self._lost_master()
        skew = self._better_backups(now) * self._config.advert_interval
        return max(since + skew, self._hold_until)

    def _evaluate(self, now: float) -> None:
        if self._state is not State.BACKUP:
            return
        masters = self._live_masters(now)
        if masters:
            self._consider_preempt(max(masters, key=lambda p: p.rank), now)
            return
        self._preempt_since = None
        deadline = self._takeover_deadline()
        if deadline is not None and now >= deadline:
            _, why = self._lost_master()
            self._fire(Input.MASTER_DOWN, why, now)

    def _consider_preempt(self, master: _Peer, now: float) -> None:
        cfg = self._config
        if not cfg.preempt or self._suppressed or master.rank > self.rank:
            self._preempt_since = None
            return
        if self._preempt_since is None:
            self._preempt_since = now
        if now >= self._preempt_since + cfg.preempt_delay:
            self._fire(Input.PREEMPT, f"preempt: {cfg.node_id} outranks master {master.node_id}", now)

    # -- active/active -------------------------------------------------------

    def _share(self, reason: str, now: float) -> None:
        """Let the active/active blocks decide with who is live now, and whether we serve."""
        if self._sharing is None:
            return
        live = {p.node_id for p in self._peers.values() if self._live(p, now)}
        serving = self._state in (State.BACKUP, State.MASTER) and now >= self._share_after
        self._actions.extend(self._sharing.step(live, serving, reason))
        if self._sharing.take_news() and self._state is not State.INIT:
            self._send(FrameType.ADVERT)

    # -- output -------------------------------------------------------------

    def _send(self, kind: FrameType) -> None:
        cfg = self._config
        frame = Frame(
            kind=kind, node_id=cfg.node_id, state=self._state, priority=cfg.priority,
            advert_interval_us=round(cfg.advert_interval * 1e6), epoch=self._epoch,
            seq=self._seq, flags=FLAG_YIELD if self._suppressed else 0,
            views=self._sharing.views() if self._sharing is not None else (),
        )
        self._seq += 1
        self._counters["frames_sent"] += 1
        try:
            data = encode(frame, self._keys)
        except ValueError:
            # More peers than the views were sized for: the election goes on without them,
            # and peers that lack our views gain no bucket (agent.core.ownership).
            self._counters["views_left_out"] += 1
            data = encode(replace(frame, views=()), self._keys)
        self._actions.append(SendFrame(data))

    def snapshot(self, now: float) -> dict:
        """Everything `agentctl status` shows, as JSON-able plain data."""
        cfg = self._config
        masters = self._live_masters(now)
        if self._state is State.MASTER:
            master: int | None = cfg.node_id
        else:
            master = max(masters, key=lambda p: p.rank).node_id if masters else None
        peers = [
            {
                "node_id": p.node_id,
                # The state it last said it was in; a dead peer says nothing any more.
                "state": p.state.name,
                "alive": self._live(p, now),
                "dead_for_s": None if self._live(p, now) else round(now - p.last_seen - p.dead_after, 6),
                "priority": p.priority,
                "age_s": round(now - p.last_seen, 6),
                "links": sorted(n for n, t in p.links.items() if now - t < p.dead_after),
                "epoch": p.epoch,
                "yielding": bool(p.flags & FLAG_YIELD),
                "loss": round(p.loss.rate, 4),
                "link_loss": {n: round(e.rate, 4) for n, e in sorted(p.link_loss.items())},
                "dead_interval_s": round(p.dead_after, 6),
            }
            for p in sorted(self._peers.values(), key=lambda p: p.node_id)
        ]
        last = None
        if self._last is not None:
            old, new, reason, at = self._last
            last = {"from": old.name, "to": new.name, "reason": reason, "age_s": round(now - at, 6)}
        timer = self.get_timer()
        return {
            "state": {"name": self._state.name, "number": int(self._state)},
            "node_id": cfg.node_id,
            "priority": cfg.priority,
            "epoch": self._epoch,
            "master": master,
            "peers": peers,
            "links": {n: {"role": r.value, "up": up, "reason": why}
                      for n, (r, up, why) in sorted(self._links.items())},
            "drops": dict(sorted(self._drops.items())),
            "counters": dict(self._counters),
            "preempt": {
                "enabled": cfg.preempt,
                "delay_s": cfg.preempt_delay,
                "suppressed": self._suppressed,
                "pending_s": None if self._preempt_since is None
                else round(now - self._preempt_since, 6),
            },
            "last_transition": last,
            "next_timer_in_s": None if timer is None else round(timer - now, 6),
            "shared": self._sharing.snapshot() if self._sharing is not None else {},
        }
