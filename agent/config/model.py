"""The validated configuration as frozen values, what the rest of the agent reads.

Field defaults come from the schema, so a value built in code means the same as
a key left out of the file. Nothing here validates: `load_config` only builds
these from checked values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.config.schema import default
from agent.core.election import ElectionConfig
from agent.core.packing import IPAddress, IPNetwork, pack_addresses


@dataclass(frozen=True)
class NodeConfig:
    id: int
    priority: int = default("node", "priority")
    preempt: bool = default("node", "preempt")
    preempt_delay: float = default("node", "preempt_delay")
    advert_interval: float = default("node", "advert_interval")
    dead_multiplier: int = default("node", "dead_multiplier")
    dead_interval_max: float = default("node", "dead_interval_max")
    false_takeover_every: float = default("node", "false_takeover_every")
    realtime_priority: int = default("node", "realtime_priority")
    state_dir: Path = Path(default("node", "state_dir"))

    @property
    def dead_interval(self) -> float:
        """Seconds of silence after which the peer is declared dead."""
        return self.advert_interval * self.dead_multiplier

    @property
    def election(self) -> ElectionConfig:
        """The election's settings; both check the same ranges (agent.core.limits)."""
        return ElectionConfig(
            node_id=self.id,
            priority=self.priority,
            preempt=self.preempt,
            preempt_delay=self.preempt_delay,
            advert_interval=self.advert_interval,
            dead_multiplier=self.dead_multiplier,
            dead_interval_max=self.dead_interval_max,
            false_takeover_every=self.false_takeover_every,
        )


@dataclass(frozen=True)
class HeartbeatLink:
    interface: str
    group: IPAddress | None
    peers: tuple[IPAddress, ...]
    port: int = default("heartbeat", "port")


@dataclass(frozen=True)
class ConntrackConfig:
    interface: str
    peers: tuple[IPAddress, ...]
    port: int = default("conntrack", "port")
    mode: str = default("conntrack", "mode")
    ignore: tuple[IPNetwork, ...] = ()
    # IP protocol numbers synced.
    protocols: frozenset[int] = frozenset()
    event_buffer: int = default("conntrack", "event_buffer")
    expected_entries: int = default("conntrack", "expected_entries")
    window_tracking: bool = default("conntrack", "window_tracking")
    max_datagram: int = default("conntrack", "max_datagram")


@dataclass(frozen=True)
class AnnounceConfig:
    pps: int = default("block.announce", "pps")
    rounds: int = default("block.announce", "rounds")
    round_delay: float = default("block.announce", "round_delay")
    refresh: float = default("block.announce", "refresh")
    arp_mode: str = default("block.announce", "arp_mode")
    via: str = default("block.announce", "via")


@dataclass(frozen=True)
class BgpConfig:
    """Where BIRD is and which of its kernel protocols learn dpagent's routes."""

    bird_socket: Path = Path(default("bgp", "bird_socket"))
    protocols: tuple[str, ...] = default("bgp", "protocols")


@dataclass(frozen=True)
class L2Config:
    mode: str = default("block.l2", "mode")
    vrid: int | None = default("block.l2", "vrid")
    cluster_mac: str = default("block.l2", "cluster_mac")
    buckets: int = default("block.l2", "buckets")
    hash: str = default("block.l2", "hash")
    hash_seed: int = default("block.l2", "hash_seed")
    backend: str = default("block.l2", "backend")
    # vmac: the MAC, from vrid and the block's IP version, and the macvlan it lives on
    # (set when the block is built).
    vmac: str | None = None
    device: str | None = None

    @property
    def mac(self) -> str | None:
        """The MAC neighbours must reach the block's addresses at, unless each node's own (garp)."""
        return {"vmac": self.vmac, "cluster-mac": self.cluster_mac}.get(self.mode)


@dataclass(frozen=True)
class Block:
    """An address block: disjoint sorted prefixes plus the loose addresses outside them."""

    name: str
    interface: str
    prefixes: tuple[IPNetwork, ...]
    addresses: tuple[IPAddress, ...]
    announce: AnnounceConfig = AnnounceConfig()
    l2: L2Config = L2Config()
    mode: str = default("block", "mode")
    weight: float = default("block", "weight")

    @property
    def shared(self) -> bool:
        """Active/active: held by every live node, its buckets split between them."""
        return self.mode == "active-active"

    @property
    def routed(self) -> bool:
        """Announced upstream over BGP: the holder keeps its companion routes in the kernel."""
        return self.announce.via in ("bgp", "both")

    @property
    def address_interface(self) -> str:
        """Where the block's IPv6 addresses go: a vmac block's on its macvlan, so that
        their neighbour advertisements carry the vmac."""
        return self.l2.device if self.l2.mode == "vmac" and self.l2.device else self.interface

    @property
    def address_count(self) -> int:
        return sum(p.num_addresses for p in self.prefixes) + len(self.addresses)

    def packed_v4(self) -> bytes:
        """Every IPv4 address of the block, ascending, 4 bytes each in network order."""
        return pack_addresses(self.prefixes, self.addresses, 4)

    def packed_v6(self) -> bytes:
        """Every IPv6 address of the block, ascending, 16 bytes each in network order."""
        return pack_addresses(self.prefixes, self.addresses, 6)


@dataclass(frozen=True)
class Config:
    path: Path
    node: NodeConfig
    heartbeat: tuple[HeartbeatLink, ...]
    key_file: Path
    control_socket: Path
    blocks: tuple[Block, ...]
    # (key id, secret) pairs from key_file, the sending key first; never printed.
    keys: tuple[tuple[int, bytes], ...] = field(default=(), repr=False)
    # (address, port) of the Prometheus HTTP listener, or None: off.
    metrics_listen: tuple[str, int] | None = None
    conntrack: ConntrackConfig | None = None
    bgp: BgpConfig = BgpConfig()
