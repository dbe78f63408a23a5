"""Makes a block's addresses local to this node, and removes exactly those again.

IPv4 needs no per-address state: each prefix, and each loose address as a /32, is
one AnyIP route (`local P dev lo table local`); the kernel then accepts traffic for
and answers ARP for every address in it. IPv6 neighbour discovery answers only for
addresses configured on an interface, so IPv6 members become interface addresses
(without DAD). Everything dpagent adds carries the protocol mark DPAGENT_PROTO
(RTPROT / IFA_PROTO), which is how leftovers of a crashed agent are found and how
a delete can never remove a route someone else installed.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from pyroute2 import IPRoute

from agent.config import Block
from agent.dataplane import nlbatch

# 199 is unassigned in /etc/iproute2/rt_protos; `ip route show proto 199` lists ours.
DPAGENT_PROTO = 199

# Keep status output bounded when a whole block fails (e.g. every address exists elsewhere).
_EXAMPLES_PER_ERROR = 5


@dataclass
class ChangeResult:
    """Counts of one take/release; errors map an errno name to a count and a few examples."""

    applied: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    problem: str | None = None
    seconds: float = 0.0

    def add(self, batch: nlbatch.BatchResult) -> None:
        self.applied += batch.applied
        for name, labels in batch.failed.items():
            self.errors[name] = self.errors.get(name, 0) + len(labels)
            kept = self.examples.setdefault(name, [])
            kept.extend(labels[: _EXAMPLES_PER_ERROR - len(kept)])

    def as_dict(self) -> dict:
        return {
            "applied": self.applied,
            "errors": dict(self.errors),
            "examples": {k: list(v) for k, v in self.examples.items()},
            "problem": self.problem,
            "seconds": round(self.seconds, 6),
        }


def _v4_routes(block: Block) -> list[IPv4Network]:
    routes = [p for p in block.prefixes if isinstance(p, IPv4Network)]
    routes += [IPv4Network(a) for a in block.addresses if isinstance(a, IPv4Address)]
    return routes


def _v6_addresses(block: Block) -> list[IPv6Address]:
    members: list[IPv6Address] = []
    for prefix in block.prefixes:
        if isinstance(prefix, IPv6Network):
            base = int(prefix.network_address)
            members.extend(IPv6Address(base + i) for i in range(prefix.num_addresses))
    members += [a for a in block.addresses if isinstance(a, IPv6Address)]
    return members


class AddressPlane:
    """Blocking netlink work; the runtime calls it from its netlink worker thread."""

    def __init__(self) -> None:
        self._ipr = IPRoute()
        self._batch = nlbatch.Batcher()

    def close(self) -> None:
        self._batch.close()
        self._ipr.close()

    @staticmethod
    def interface_index(name: str) -> int | None:
        """One ioctl; a pyroute2 link dump here cost ~1 ms of every takeover."""
        try:
            return socket.if_nametoindex(name)
        except OSError:
            return None

    def take(self, block: Block) -> ChangeResult:
        return self._change(block, add=True)

    def release(self, block: Block) -> ChangeResult:
        return self._change(block, add=False)

    def _change(self, block: Block, *, add: bool) -> ChangeResult:
        started = time.perf_counter()
        result = ChangeResult()
        lo = self.interface_index("lo")
        routes = _v4_routes(block)
        if routes and lo is not None:
            kind = nlbatch.RTM_NEWROUTE if add else nlbatch.RTM_DELROUTE
            items = [(str(n), nlbatch.local_route(n, DPAGENT_PROTO, lo)) for n in routes]
            result.add(self._batch.apply(kind, items))
        v6 = _v6_addresses(block)
        if v6:
            index = self.interface_index(block.interface)
            if index is None:
                result.problem = f"interface {block.interface} not found"
            else:
                kind = nlbatch.RTM_NEWADDR if add else nlbatch.RTM_DELADDR
                items = [(str(a), nlbatch.interface_address(a, DPAGENT_PROTO, index)) for a in v6]
                result.add(self._batch.apply(kind, items, nlbatch.IPV6_ADDRESSES_PER_SEND))
        result.seconds = time.perf_counter() - started
        return result

    def remove_leftovers(self) -> ChangeResult:
        """Delete every route and address carrying our mark: a crashed agent's state."""
        started = time.perf_counter()
        result = ChangeResult()
        for family in (socket.AF_INET, socket.AF_INET6):
            routes = []
            for msg in self._ipr.get_routes(family=family, table=nlbatch.RT_TABLE_LOCAL):
                if msg["proto"] != DPAGENT_PROTO or msg["type"] != nlbatch.RTN_LOCAL:
                    continue
                net = ip_network(f"{msg.get('RTA_DST')}/{msg['dst_len']}")
                oif = msg.get("RTA_OIF") or 0
                routes.append((str(net), nlbatch.local_route(net, DPAGENT_PROTO, oif)))
            result.add(self._batch.apply(nlbatch.RTM_DELROUTE, routes))
        addresses = []
        for msg in self._ipr.get_addr():
            if msg.get("IFA_PROTO") != DPAGENT_PROTO:
                continue
            address = ip_address(msg.get("IFA_ADDRESS"))
            addresses.append((str(address), nlbatch.interface_address(address, DPAGENT_PROTO, msg["index"])))
        result.add(self._batch.apply(nlbatch.RTM_DELADDR, addresses, nlbatch.IPV6_ADDRESSES_PER_SEND))
        result.seconds = time.perf_counter() - started
        return result
