"""pack_addresses gives exactly the bytes of every address of one IP version, ascending,
once each: the announcer patches them into frames without looking at them again."""

from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.packing import IPAddress, IPNetwork, pack_addresses

V4_BASE = int(ip_address("198.18.0.0"))
V6_BASE = int(ip_address("2001:db8::"))


def sort_key(item: IPAddress | IPNetwork) -> tuple[int, int]:
    """The config loader's order: by version, then by (first) address."""
    first = item.network_address if isinstance(item, (IPv4Network, IPv6Network)) else item
    return item.version, int(first)


def disjoint(nets: list[IPNetwork]) -> list[IPNetwork]:
    """Sorted, with every prefix that overlaps an earlier one dropped (as a block's are)."""
    kept: list[IPNetwork] = []
    for net in sorted(nets, key=lambda n: (n.version, int(n.network_address), n.prefixlen)):
        if not kept or kept[-1].version != net.version or not kept[-1].overlaps(net):
            kept.append(net)
    return kept


def v4_net(offset: int, length: int) -> IPNetwork:
    return ip_network((V4_BASE + offset, length), strict=False)


def v6_net(offset: int, length: int) -> IPNetwork:
    return ip_network((V6_BASE + offset, length), strict=False)


# Addresses and prefixes crowd a small range, so that prefixes collide and loose
# addresses fall before, between and after them. IPv6 prefixes are /116 or
# longer, as the config loader allows.
NETS = st.one_of(
    st.builds(v4_net, st.integers(0, 1 << 16), st.integers(20, 32)),
    st.builds(v6_net, st.integers(0, 1 << 16), st.integers(116, 128)),
)
LOOSE = st.one_of(
    st.builds(lambda o: ip_address(V4_BASE + o), st.integers(0, 1 << 16)),
    st.builds(lambda o: ip_address(V6_BASE + o), st.integers(0, 1 << 16)),
)


@st.composite
def blocks(draw) -> tuple[list[IPNetwork], list[IPAddress]]:
    """Disjoint sorted prefixes and the sorted loose addresses outside them, both versions."""
    nets = disjoint(draw(st.lists(NETS, max_size=8)))
    loose = {a for a in draw(st.lists(LOOSE, max_size=40))
             if not any(a.version == n.version and a in n for n in nets)}
    return nets, sorted(loose, key=sort_key)


def reference(nets: list[IPNetwork], loose: list[IPAddress], version: int) -> bytes:
    everything = [a for n in nets if n.version == version for a in n] + [
        a for a in loose if a.version == version]
    return b"".join(a.packed for a in sorted(everything, key=sort_key))


def unpacked(data: bytes, version: int) -> list[int]:
    size = 4 if version == 4 else 16
    assert len(data) % size == 0
    return [int.from_bytes(data[i:i + size], "big") for i in range(0, len(data), size)]


@settings(max_examples=300, deadline=None)
@given(blocks(), st.sampled_from([4, 6]))
def test_every_address_of_one_version_once_ascending(block, version):
    nets, loose = block
    data = pack_addresses(nets, loose, version)
    values = unpacked(data, version)
    assert values == sorted(set(values))  # ascending, no duplicates
    count = sum(n.num_addresses for n in nets if n.version == version) + sum(
        a.version == version for a in loose)
    assert len(values) == count  # nothing of the other version, nothing lost
    assert data == reference(nets, loose, version)


def test_exact_bytes_v4():
    nets = [ip_network("192.0.2.0/30")]
    loose = [ip_address("10.0.0.1"), ip_address("192.0.2.9")]
    assert pack_addresses(nets, loose, 4).hex(" ", 4) == (
        "0a000001 c0000200 c0000201 c0000202 c0000203 c0000209")


def test_exact_bytes_v6():
    nets = [ip_network("2001:db8::/127")]
    loose = [ip_address("2001:db8::ffff")]
    prefix = "20010db8000000000000000000"
    assert pack_addresses(nets, loose, 6).hex() == (
        f"{prefix}000000" f"{prefix}000001" f"{prefix}00ffff")


def test_a_v4_slash_16_is_exact():
    net = ip_network("198.18.0.0/16")
    assert pack_addresses([net], [], 4) == b"".join(a.packed for a in net)


def test_a_v6_prefix_ending_at_the_16_bit_boundary_is_exact():
    """The 16-bit counter of the IPv6 range packer reaches 0xffff and must not carry."""
    net = ip_network("2001:db8::f000/116")
    assert pack_addresses([net], [], 6) == b"".join(a.packed for a in net)


def test_versions_are_split():
    nets = [ip_network("192.0.2.0/31"), ip_network("2001:db8::/127")]
    loose = [ip_address("10.0.0.1"), ip_address("2001:db8::9")]
    assert unpacked(pack_addresses(nets, loose, 4), 4) == [
        int(ip_address(a)) for a in ("10.0.0.1", "192.0.2.0", "192.0.2.1")]
    assert unpacked(pack_addresses(nets, loose, 6), 6) == [
        int(ip_address(a)) for a in ("2001:db8::", "2001:db8::1", "2001:db8::9")]
    assert pack_addresses([], [], 4) == pack_addresses(nets[1:], loose[1:], 4) == b""
