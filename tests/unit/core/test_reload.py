"""agent.core.reload: block diffs and address deltas compare what the kernel holds."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from hypothesis import given
from hypothesis import strategies as st

from agent.core.reload import address_delta, diff_blocks, kernel_addresses


@dataclass(frozen=True)
class A:
    via: str = "l2"


@dataclass(frozen=True)
class B:
    name: str
    interface: str = "eth1"
    prefixes: tuple = ()
    addresses: tuple = ()
    l2: str = "garp"
    announce: A = A()


def nets(*texts: str) -> tuple:
    return tuple(ip_network(t) for t in texts)


def addrs(*texts: str) -> tuple:
    return tuple(ip_address(t) for t in texts)


def test_diff_sorts_blocks_by_what_happens_to_them():
    old = {"a": B("a", prefixes=nets("198.18.0.0/24")), "b": B("b"), "c": B("c"), "d": B("d")}
    new = {"a": B("a", prefixes=nets("198.18.0.0/25")), "b": B("b"), "c": B("c", interface="eth2"), "e": B("e")}
    diff = diff_blocks(old, new)
    assert diff.added == ("e",)
    assert diff.removed == ("d",)
    assert diff.adjusted == ("a",)
    assert diff.replaced == ("c",)
    assert not diff.empty
    assert diff_blocks(old, dict(old)).empty


def test_announcing_another_way_replaces_the_block():
    old = {"a": B("a"), "b": B("b", announce=A("bgp"))}
    new = {"a": B("a", announce=A("both")), "b": B("b", announce=A("bgp"), prefixes=nets("198.18.0.0/24"))}
    diff = diff_blocks(old, new)
    assert diff.replaced == ("a",)
    assert diff.adjusted == ("b",)


def test_a_block_whose_l2_mode_changes_is_released_and_taken_again():
    diff = diff_blocks({"a": B("a")}, {"a": B("a", l2="vmac")})
    assert (diff.adjusted, diff.replaced) == ((), ("a",))


def test_ipv6_prefix_narrowed_keeps_the_addresses_the_new_config_still_lists():
    """The landed bug: /116 -> /117 re-added nothing (EEXIST), then removed all 4,096."""
    old = B("v6", prefixes=nets("2001:db8:1::/116"))
    new = B("v6", prefixes=nets("2001:db8:1::/117"))
    delta = address_delta(old, new)
    assert delta.add.v6_addresses == () and delta.add.v4_routes == ()
    removed = set(delta.remove.v6_addresses)
    assert len(removed) == 2048
    assert min(removed) == IPv6Address("2001:db8:1::800") and max(removed) == IPv6Address("2001:db8:1::fff")


def test_ipv6_prefix_replaced_by_a_loose_address_inside_it_keeps_that_address():
    old = B("v6", prefixes=nets("2001:db8:1::/120"))
    new = B("v6", addresses=addrs("2001:db8:1::7"))
    delta = address_delta(old, new)
    assert delta.add.v6_addresses == ()
    assert IPv6Address("2001:db8:1::7") not in delta.remove.v6_addresses
    assert len(delta.remove.v6_addresses) == 255


def test_ipv4_prefix_replaced_by_a_loose_address_adds_its_route_then_drops_the_prefix():
    old = B("v4", prefixes=nets("198.18.0.0/24"))
    new = B("v4", addresses=addrs("198.18.0.5"))
    delta = address_delta(old, new)
    assert delta.add.v4_routes == (IPv4Network("198.18.0.5/32"),)
    assert delta.remove.v4_routes == (IPv4Network("198.18.0.0/24"),)


def test_ipv4_loose_addresses_edited_change_only_the_difference():
    old = B("v4", prefixes=nets("198.18.0.0/16"), addresses=addrs("203.0.113.50", "203.0.113.51"))
    new = B("v4", prefixes=nets("198.18.0.0/16"), addresses=addrs("203.0.113.51", "203.0.113.52"))
    delta = address_delta(old, new)
    assert delta.add.v4_routes == (IPv4Network("203.0.113.52/32"),)
    assert delta.remove.v4_routes == (IPv4Network("203.0.113.50/32"),)


def test_kernel_addresses_are_a_route_per_v4_item_and_an_address_per_v6_member():
    members = kernel_addresses(nets("198.18.0.0/16", "2001:db8::/126"), addrs("192.0.2.1", "2001:db8:9::1"))
    assert members.v4_routes == (IPv4Network("198.18.0.0/16"), IPv4Network("192.0.2.1/32"))
    assert len(members.v6_addresses) == 5
    assert not kernel_addresses((), ())


v4_items = st.lists(st.integers(0, 255).map(lambda i: IPv4Address(0xC6120000 + i)), unique=True, max_size=20)
v6_items = st.lists(st.integers(0, 255).map(lambda i: IPv6Address(0x20010DB8 << 96 | i)), unique=True, max_size=20)


@given(v4_items, v6_items, v4_items, v6_items)
def test_applying_the_delta_to_the_old_state_gives_the_new_state(old4, old6, new4, new6):
    old = B("x", addresses=tuple(old4 + old6))
    new = B("x", addresses=tuple(new4 + new6))
    delta = address_delta(old, new)
    before = kernel_addresses(old.prefixes, old.addresses)
    after = kernel_addresses(new.prefixes, new.addresses)
    for field in ("v4_routes", "v6_addresses"):
        state = set(getattr(before, field))
        add, remove = set(getattr(delta.add, field)), set(getattr(delta.remove, field))
        assert not add & state and remove <= state
        assert (state | add) - remove == set(getattr(after, field))


def test_prefixes_of_both_versions_are_compared_by_members():
    old = B("x", prefixes=(IPv4Network("198.18.0.0/30"), IPv6Network("2001:db8::/126")))
    new = B("x", prefixes=(IPv4Network("198.18.0.0/30"), IPv6Network("2001:db8::/127")))
    delta = address_delta(old, new)
    assert delta.add.v4_routes == () and delta.remove.v4_routes == ()
    assert delta.remove.v6_addresses == addrs("2001:db8::2", "2001:db8::3")
