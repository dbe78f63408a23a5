"""What a reload changes, computed from the old and new block definitions.

Kept pure so the rules are unit-tested: a block whose interface is unchanged is
adjusted in place (only what is new goes in, only what is gone comes out), so
editing an address file never flaps the addresses that stay. The address delta
compares what the kernel holds, not prefix objects: an IPv6 /116 narrowed to a
/117 keeps 2,048 interface addresses and removes the other 2,048, and a prefix
replaced by one loose address inside it keeps that address.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Protocol

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


class BlockLike(Protocol):
    name: str
    interface: str
    prefixes: tuple[IPNetwork, ...]
    addresses: tuple[IPAddress, ...]
    l2: object
    announce: Announced


class Announced(Protocol):
    via: str


@dataclass(frozen=True)
class BlockDiff:
    """Block names by what happens to them; `replaced` moved to another interface or
    L2 setting, or is announced another way (L2, BGP): neighbours reach it another
    way, so it is released and taken again."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    adjusted: tuple[str, ...]
    replaced: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.adjusted or self.replaced)


def diff_blocks(old: Mapping[str, BlockLike], new: Mapping[str, BlockLike]) -> BlockDiff:
    kept = [name for name in new if name in old and new[name] != old[name]]
    return BlockDiff(
        added=tuple(name for name in new if name not in old),
        removed=tuple(name for name in old if name not in new),
        adjusted=tuple(n for n in kept if _same_place(old[n], new[n])),
        replaced=tuple(n for n in kept if not _same_place(old[n], new[n])),
    )


def _same_place(old: BlockLike, new: BlockLike) -> bool:
    return old.interface == new.interface and old.l2 == new.l2 and old.announce.via == new.announce.via


@dataclass(frozen=True)
class KernelAddresses:
    """What makes a block local in the kernel: IPv4 AnyIP routes (a prefix each, a /32
    per loose address) and one IPv6 interface address per member."""

    v4_routes: tuple[IPv4Network, ...]
    v6_addresses: tuple[IPv6Address, ...]

    def __bool__(self) -> bool:
        return bool(self.v4_routes or self.v6_addresses)


def kernel_addresses(prefixes: Iterable[IPNetwork], addresses: Iterable[IPAddress]) -> KernelAddresses:
    prefixes, addresses = tuple(prefixes), tuple(addresses)
    routes = [p for p in prefixes if isinstance(p, IPv4Network)]
    routes += [IPv4Network(a) for a in addresses if isinstance(a, IPv4Address)]
    v6: list[IPv6Address] = []
    for prefix in prefixes:
        if isinstance(prefix, IPv6Network):
            base = int(prefix.network_address)
            v6.extend(IPv6Address(base + i) for i in range(prefix.num_addresses))
    v6 += [a for a in addresses if isinstance(a, IPv6Address)]
    return KernelAddresses(tuple(routes), tuple(v6))


@dataclass(frozen=True)
class AddressDelta:
    add: KernelAddresses
    remove: KernelAddresses


def address_delta(old: BlockLike, new: BlockLike) -> AddressDelta:
    """What to add and what to remove to go from `old`'s kernel state to `new`'s.

    An IPv4 prefix stays one route even when a route inside it comes or goes: the
    kernel picks the longest match, and a /32 inside a /16 is a separate route.
    """
    before = kernel_addresses(old.prefixes, old.addresses)
    after = kernel_addresses(new.prefixes, new.addresses)
    return AddressDelta(_minus(after, before), _minus(before, after))


def _minus(a: KernelAddresses, b: KernelAddresses) -> KernelAddresses:
    routes, v6 = set(b.v4_routes), set(b.v6_addresses)
    return KernelAddresses(tuple(r for r in a.v4_routes if r not in routes),
                           tuple(x for x in a.v6_addresses if x not in v6))
