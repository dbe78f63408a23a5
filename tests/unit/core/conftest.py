"""An in-memory cluster of election Nodes with a manual clock (h11's ConnectionPair idea).

Frames travel over named heartbeat links with a latency, optional loss and
partitions; nodes can stall (no timers, no reads, frames queue up) and be
killed or restarted with a new epoch. The harness plays the runtime: it drains
actions after every call, sends SendFrame bytes on every heartbeat link that is
up at both ends, and checks per-block TakeBlock/ReleaseBlock pairing as it goes.

Two models of the heartbeat links. Switched (the default): every node's hb0
reaches every other node's hb0 through a switch, which keeps carrier when a
node dies, so the nodes learn nothing but silence. Direct cables
(`direct_cables=True`): each heartbeat port is one end of a point-to-point
cable, and a cable has carrier while the ports at both ends are up and both
hosts alive. When a cable goes dark, the live end whose own port is still up
is told what the runtime's link monitor tells the core (LinkChanged up with
"no carrier", then CarrierLost) and loses the frames still on that cable,
since the runtime reopens the port's socket on every link event.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import pytest

from agent.core.actions import OwnBuckets, ReleaseBlock, SendFrame, StateChanged, TakeBlock
from agent.core.election import ElectionConfig, Node
from agent.core.sharing import SharedBlock, Sharing
from agent.core.events import CarrierLost, Event, LinkChanged, LinkRole, LoopStalled, Shutdown
from agent.core.states import State
from agent.core.wire import FrameType, KeyRing, decode

KEYS = KeyRing(((1, b"k" * 32),))
HEARTBEATS = ("hb0", "hb1")
BLOCK = "ext0"
BLOCK_NAMES = ("ext", "ext6")
NO_CARRIER = "no carrier"  # agent.runtime.linkmon's reason; not imported, to keep pyroute2 out

Port = tuple[int, str]  # (node_id, heartbeat link name): one end of a direct cable


def direct_cables_for(node_ids: list[int]) -> dict[Port, Port]:
    """Each port's far end: two parallel cables for a pair, else one cable per pair (full mesh)."""
    ids = sorted(node_ids)
    if len(ids) == 2:
        a, b = ids
        pairs = [((a, name), (b, name)) for name in HEARTBEATS]
    elif len(ids) == len(HEARTBEATS) + 1:
        # Node x's k-th port goes to the k-th other node, in node_id order.
        def port(x: int, y: int) -> Port:
            return (x, HEARTBEATS[[o for o in ids if o != x].index(y)])
        pairs = [(port(x, y), port(y, x)) for x in ids for y in ids if x < y]
    else:
        raise ValueError(f"no direct-cable layout for {len(ids)} nodes with {len(HEARTBEATS)} ports")
    return {a: b for a, b in pairs} | {b: a for a, b in pairs}


@dataclass(order=True)
class _Flight:
    at: float
    order: int
    dst: int = field(compare=False)
    link: str = field(compare=False)
    data: bytes = field(compare=False)
    src: int = field(compare=False)
    src_term: int = field(compare=False)


@dataclass
class Member:
    config: ElectionConfig
    node: Node
    up: bool = True  # False: crashed (no timers, frames lost)
    stalled_since: float | None = None
    stall_until: float = 0.0
    backlog: list[_Flight | Event] = field(default_factory=list)  # read after the stall, in order
    links: dict[str, bool] = field(default_factory=dict)
    holds: set[str] = field(default_factory=set)
    # Active/active blocks: the buckets the kernel accepts, as the runtime applied them.
    buckets: dict[str, frozenset[int]] = field(default_factory=dict)
    term: int = 0
    epochs: int = 1
    newest: dict[int, tuple[int, int]] = field(default_factory=dict)


class Cluster:
    def __init__(self, configs: list[ElectionConfig], latency: float = 0.001,
                 keys: KeyRing = KEYS, seed: int = 0, direct_cables: bool = False,
                 shared: tuple[SharedBlock, ...] = ()) -> None:
        self.now = 0.0
        self.shared = shared
        self.latency = latency
        self.loss = 0.0
        self.jitter = 0.0
        self.keys = keys
        self.rng = random.Random(seed)
        self.partitions: set[frozenset[int]] = set()
        self.members = {c.node_id: self._member(c, epoch=1) for c in configs}
        self.cables: dict[Port, Port] | None = (
            direct_cables_for(list(self.members)) if direct_cables else None)
        self.log: list[tuple[float, int, StateChanged]] = []
        self.sent: list[tuple[float, int, bytes]] = []
        self.heard: dict[tuple[int, int], tuple[int, int]] = {}
        self._flights: list[_Flight] = []
        self._order = 0

    def _member(self, config: ElectionConfig, epoch: int) -> Member:
        links = {name: True for name in HEARTBEATS} | {BLOCK: True}
        sharing = Sharing(config.node_id, epoch, self.shared) if self.shared else None
        return Member(config, Node(config, self.keys, epoch, BLOCK_NAMES, sharing), links=links)

    # -- driving ----------------------------------------------------------

    def node(self, node_id: int) -> Node:
        return self.members[node_id].node

    def start(self, node_id: int | None = None) -> None:
        for nid in [node_id] if node_id is not None else list(self.members):
            member = self.members[nid]
            for name, up in member.links.items():
                role = LinkRole.BLOCK if name == BLOCK else LinkRole.HEARTBEAT
                if up and role is LinkRole.HEARTBEAT and self._dark((nid, name)):
                    # What the runtime reads at start-up from a port whose far end is dark.
                    member.node.receive(LinkChanged(name, role, True, NO_CARRIER), self.now)
                    member.node.receive(CarrierLost(name), self.now)
                else:
                    member.node.receive(LinkChanged(name, role, up), self.now)
            member.node.start(self.now)
            self._drain(nid)

    def event(self, node_id: int, event: Event) -> None:
        self.members[node_id].node.receive(event, self.now)
        self._drain(node_id)

    def set_link(self, node_id: int, name: str, up: bool) -> None:
        member = self.members[node_id]
        dark = self._dark_ports()
        member.links[name] = up
        role = LinkRole.BLOCK if name == BLOCK else LinkRole.HEARTBEAT
        if member.up:
            self.event(node_id, LinkChanged(name, role, up, "carrier lost" if not up else ""))
        self._carrier_changed(dark, node_id)

    def kill(self, node_id: int) -> None:
        """Crash: the node sends nothing more and hears nothing; its blocks are gone.

        With direct cables, the host is gone too: its cables go dark."""
        member = self.members[node_id]
        dark = self._dark_ports()
        member.up = False
        member.holds = set()
        member.buckets = {}
        self._carrier_changed(dark, node_id)

    def restart(self, node_id: int, graceful: bool = True) -> None:
        member = self.members[node_id]
        if graceful and member.up:
            self.event(node_id, Shutdown())
        dark = self._dark_ports()
        member.epochs += 1
        fresh = self._member(member.config, member.epochs)
        fresh.links, fresh.epochs, fresh.term = member.links, member.epochs, member.term
        self.members[node_id] = fresh
        # A crashed host's cables light up as it boots, before the agent starts.
        self._carrier_changed(dark, node_id)
        self.start(node_id)

    def stall(self, node_id: int, duration: float) -> None:
        member = self.members[node_id]
        if member.stalled_since is None:
            member.stalled_since = self.now
        member.stall_until = max(member.stall_until, self.now + duration)

    def deliver(self, src: int, dst: int, data: bytes, link: str = "hb0") -> None:
        """Hand one datagram to a node right now (bypasses links and loss)."""
        self._receive(_Flight(self.now, 0, dst, link, data, src, -1))

    # -- clock ------------------------------------------------------------

    def run_until(self, end: float, check=None) -> None:
        while True:
            at, step = self._next_step()
            if at > end:
                break
            self.now = max(self.now, at)
            step()
            if check is not None:
                check(self)
        self.now = end

    def run_for(self, duration: float, check=None) -> None:
        self.run_until(self.now + duration, check)

    def _next_step(self):
        candidates = []
        if self._flights:
            candidates.append((self._flights[0].at, 0, self._land))
        for nid, member in self.members.items():
            if not member.up:
                continue
            if member.stalled_since is not None:
                candidates.append((member.stall_until, 1, lambda n=nid: self._unstall(n)))
                continue
            timer = member.node.get_timer()
            if timer is not None:
                candidates.append((timer, 2, lambda n=nid: self._timer(n)))
        if not candidates:
            return float("inf"), None
        at, _, step = min(candidates, key=lambda c: (c[0], c[1]))
        return at, step

    def _timer(self, node_id: int) -> None:
        self.members[node_id].node.handle_timer(self.now)
        self._drain(node_id)

    def _unstall(self, node_id: int) -> None:
        member = self.members[node_id]
        lag = self.now - (member.stalled_since or self.now)
        member.stalled_since = None
        self.event(node_id, LoopStalled(lag))
        backlog, member.backlog = member.backlog, []
        for item in backlog:
            if isinstance(item, _Flight):
                self._receive(item)
            else:
                self.event(node_id, item)
        self._timer(node_id)

    def _land(self) -> None:
        flight = heapq.heappop(self._flights)
        member = self.members[flight.dst]
        if not member.up or not member.links.get(flight.link, False):
            return
        if member.stalled_since is not None:
            member.backlog.append(flight)
            return
        self._receive(flight)

    def _receive(self, flight: _Flight) -> None:
        member = self.members[flight.dst]
        self._note_heard(member, flight)
        member.node.receive_datagram(flight.data, flight.link, self.now)
        self._drain(flight.dst)

    def _note_heard(self, member: Member, flight: _Flight) -> None:
        """Record a MASTER advert heard as the sender's newest, by a master, in both terms."""
        try:
            frame = decode(flight.data, self.keys)
        except Exception:
            return
        if member.node.state is State.INIT:
            return
        key = (frame.epoch, frame.seq)
        if key <= member.newest.get(frame.node_id, (-1, -1)):
            return
        member.newest[frame.node_id] = key
        sender = self.members[flight.src]
        if (frame.kind is FrameType.ADVERT and frame.state is State.MASTER
                and member.node.state is State.MASTER and sender.node.state is State.MASTER
                and flight.src_term == sender.term):
            self.heard[(flight.dst, flight.src)] = (member.term, sender.term)

    # -- actions ----------------------------------------------------------

    def _drain(self, node_id: int) -> None:
        member = self.members[node_id]
        while actions := member.node.actions():
            self._carry_out(node_id, member, actions)
        shared = {b.name for b in self.shared}
        assert member.holds - shared == (set(BLOCK_NAMES) if member.node.state is State.MASTER else set()), node_id

    def _carry_out(self, node_id: int, member: Member, actions: list) -> None:
        for action in actions:
            if isinstance(action, SendFrame):
                self._send(node_id, action.data)
            elif isinstance(action, TakeBlock):
                assert action.name not in member.holds, f"node {node_id}: TakeBlock {action.name} twice"
                member.holds.add(action.name)
            elif isinstance(action, ReleaseBlock):
                assert action.name in member.holds, f"node {node_id}: ReleaseBlock {action.name} without TakeBlock"
                member.holds.discard(action.name)
            elif isinstance(action, OwnBuckets):
                assert action.name in member.holds, f"node {node_id}: buckets of {action.name}, not held"
                member.buckets[action.name] = action.buckets
                member.node.buckets_applied(action.name, action.buckets)
            elif isinstance(action, StateChanged):
                if action.new is State.MASTER:
                    member.term += 1
                self.log.append((self.now, node_id, action))

    def _send(self, src: int, data: bytes) -> None:
        sender = self.members[src]
        self.sent.append((self.now, src, data))
        for link in HEARTBEATS:
            if not sender.links[link]:
                continue
            for dst, dst_link in self._reach((src, link)):
                if frozenset((src, dst)) in self.partitions or self.rng.random() < self.loss:
                    continue
                delay = self.latency + self.rng.random() * self.jitter
                self._order += 1
                heapq.heappush(self._flights, _Flight(
                    self.now + delay, self._order, dst, dst_link, data, src, sender.term))

    def _reach(self, port: Port) -> list[Port]:
        """The ports a frame sent on this port arrives at."""
        src, link = port
        if self.cables is None:
            return [(dst, link) for dst in self.members if dst != src]
        return [] if self._dark(port) else [self.cables[port]]

    # -- direct cables ------------------------------------------------------

    def _dark(self, port: Port) -> bool:
        """A direct cable without carrier: a port at either end down, or a host dead."""
        if self.cables is None:
            return False
        return not all(self.members[n].up and self.members[n].links[name]
                       for n, name in (port, self.cables[port]))

    def _dark_ports(self) -> set[Port]:
        return {port for port in self.cables or () if self._dark(port)}

    def _carrier_changed(self, dark_before: set[Port], cause: int) -> None:
        """Tell the far ends of the cables that went dark or lit up, as the runtime would.

        The node that caused the change (its port, its host) already knows; the far
        end hears it only when it is alive with its own port up (else its carrier was
        never there to lose)."""
        dark = self._dark_ports()
        for port in sorted(dark - dark_before):
            self._flights = [f for f in self._flights
                             if (f.dst, f.link) not in (port, self.cables[port])]
            heapq.heapify(self._flights)
            node_id, name = port
            if node_id != cause and self.members[node_id].up and self.members[node_id].links[name]:
                self._notify(node_id, [LinkChanged(name, LinkRole.HEARTBEAT, True, NO_CARRIER),
                                       CarrierLost(name)])
        for node_id, name in sorted(dark_before - dark):
            if node_id != cause:
                self._notify(node_id, [LinkChanged(name, LinkRole.HEARTBEAT, True)])

    def _notify(self, node_id: int, events: list[Event]) -> None:
        """A link event from the kernel: a stalled loop reads it after what queued before it."""
        member = self.members[node_id]
        if member.stalled_since is not None:
            member.backlog.extend(events)
            return
        for event in events:
            self.event(node_id, event)

    # -- observations -----------------------------------------------------

    def masters(self) -> list[int]:
        return sorted(n for n, m in self.members.items()
                      if m.up and m.node.state is State.MASTER)

    def states(self) -> dict[int, State]:
        return {n: m.node.state for n, m in self.members.items()}

    def transitions(self, node_id: int) -> list[StateChanged]:
        return [sc for _, n, sc in self.log if n == node_id]


@pytest.fixture(scope="session")
def cluster_class() -> type[Cluster]:
    return Cluster
