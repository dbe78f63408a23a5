"""The order of a block's takeover and release, as data.

Each line names one dataplane facility. Steps marked `before_traffic` must
finish before the block may carry traffic here (connection state replayed
before the filter gate opens, the gate open before the addresses are local); the others run behind it, once every block is serving, so that a small
block never waits for a big block's announcement. A new kernel facility is one
more line in TAKEOVER. A release runs the same steps in the opposite order.
A step serves the L2 modes and cluster-filter backends it names: a cluster-mac
block announces nothing, a garp block has no virtual MAC to bring up, and a
cluster-mac block's buckets are owned in nftables or in XDP, not both. A step
also serves the ways of announcing it names ([block.announce] via): GARP/NA for
"l2", the companion routes BIRD announces upstream for "bgp", both for "both".
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


L2_MODES = frozenset({"garp", "vmac", "cluster-mac"})
BACKENDS = frozenset({"nft", "xdp"})
VIAS = frozenset({"l2", "bgp", "both"})


@dataclass(frozen=True)
class Step:
    facility: str
    before_traffic: bool
    # Run again, alone, when the core asks for a held block to be announced again.
    announces: bool = False
    modes: frozenset[str] = L2_MODES
    backends: frozenset[str] = BACKENDS
    vias: frozenset[str] = VIAS
    # The facility that holds a block's flow buckets (active/active moves them one by one).
    owns_buckets: bool = False


TAKEOVER: tuple[Step, ...] = (
    Step("conntrack", before_traffic=True),                 # the peers' connection state into the kernel
    Step("gate", before_traffic=True),                      # nftables: the block's lease, opened
    Step("vmac", before_traffic=True, modes=frozenset({"vmac"})),            # the virtual MAC's macvlan up
    Step("buckets", before_traffic=True, modes=frozenset({"cluster-mac"}),   # cluster MAC: flow buckets owned,
         backends=frozenset({"nft"}), owns_buckets=True),                      # in the netdev filter
    Step("xdp", before_traffic=True, modes=frozenset({"cluster-mac"}),       # or in the XDP filter
         backends=frozenset({"xdp"}), owns_buckets=True),
    Step("addresses", before_traffic=True),                 # AnyIP routes, IPv6 interface addresses
    # Companion routes in table 199 for BIRD to announce upstream: only once the block is
    # local, or the upstream sends traffic here that nothing accepts, and withdrawn first on
    # a release. One netlink message per prefix, so it goes with the steps traffic waits
    # for, right behind the addresses: behind them it would wait for other blocks' GARP waves.
    Step("routes", before_traffic=True, vias=frozenset({"bgp", "both"})),
    Step("announce", before_traffic=False, announces=True,  # GARP / unsolicited NA rounds; from the vmac
         modes=frozenset({"garp", "vmac"}), vias=frozenset({"l2", "both"})),
)


def takeover(facilities: Collection[str], mode: str = "garp", backend: str = "nft",
             via: str = "l2") -> tuple[Step, ...]:
    """The takeover steps of a block in L2 mode `mode`, its cluster filter in `backend`,
    announced `via`, served by these facilities, in order."""
    return tuple(step for step in TAKEOVER
                 if step.facility in facilities and mode in step.modes and backend in step.backends
                 and via in step.vias)


def release(facilities: Collection[str], mode: str = "garp", backend: str = "nft",
            via: str = "l2") -> tuple[Step, ...]:
    """The release steps: announcing stops first (the routes are withdrawn before the
    addresses go), the gate closes last."""
    return tuple(reversed(takeover(facilities, mode, backend, via)))


def reannounce(facilities: Collection[str], mode: str = "garp", backend: str = "nft",
               via: str = "l2") -> tuple[Step, ...]:
    return tuple(step for step in takeover(facilities, mode, backend, via) if step.announces)


def phases(steps: tuple[Step, ...]) -> tuple[tuple[Step, ...], tuple[Step, ...]]:
    """(the steps traffic waits for, the steps that may run behind it), each in order."""
    return (tuple(s for s in steps if s.before_traffic), tuple(s for s in steps if not s.before_traffic))
