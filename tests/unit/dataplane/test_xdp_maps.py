"""agent.dataplane.xdp's encoders: what the agent writes into the filter's maps, without root."""

from __future__ import annotations

import ipaddress
import struct

from agent.config import Block, L2Config
from agent.dataplane import xdp

BLOCK = Block(name="ext", interface="eth1",
              prefixes=(ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("2001:db8:5::/120")),
              addresses=(ipaddress.ip_address("203.0.113.7"), ipaddress.ip_address("2001:db8::7")),
              l2=L2Config(mode="cluster-mac", cluster_mac="01:00:5e:00:01:07", buckets=100,
                          hash="sourceip-sourceport", hash_seed=0xABCD, backend="xdp"))


def test_lpm_keys_hold_each_prefix_and_each_single_address_per_ip_version() -> None:
    v4, v6 = xdp.lpm_keys(BLOCK)
    assert v4 == struct.pack("=I", 24) + bytes([198, 51, 100, 0]) + struct.pack("=I", 32) + bytes([203, 0, 113, 7])
    assert len(v6) == 2 * xdp.V6_KEY
    assert v6[:xdp.V6_KEY] == struct.pack("=I", 120) + ipaddress.ip_address("2001:db8:5::").packed
    assert v6[xdp.V6_KEY:] == struct.pack("=I", 128) + ipaddress.ip_address("2001:db8::7").packed


def test_an_entry_carries_the_block_settings_and_owns_nothing() -> None:
    entry = xdp.block_entry(BLOCK, "02:00:00:00:00:09")
    assert (entry.buckets, entry.seed, entry.hash, entry.expires_ns) == (100, 0xABCD, xdp.lib.DP_HASH_SOURCE_PORT, 0)
    assert bytes(entry.cluster_mac) == bytes.fromhex("01005e000107")
    assert bytes(entry.own_mac) == bytes.fromhex("020000000009")
    assert list(entry.owned) == [0] * xdp.lib.DP_OWNED_WORDS


def test_owned_buckets_are_bits_of_the_bitmap() -> None:
    entry = xdp.block_entry(BLOCK, "02:00:00:00:00:09")
    xdp.set_owned(entry, [0, 31, 32, 99], 123)
    assert entry.expires_ns == 123
    assert list(entry.owned)[:4] == [1 | 1 << 31, 1, 0, 1 << 3]
    xdp.set_owned(entry, range(100), 5)
    assert sum(bin(word).count("1") for word in entry.owned) == 100


def test_the_16_index_names_whole_16s_and_sends_the_rest_to_the_trie() -> None:
    wide = Block(name="wide", interface="eth1", prefixes=(ipaddress.ip_network("10.0.0.0/14"),), addresses=())
    index = xdp.v4_index([(BLOCK, 0), (wide, 5)])
    mixed = xdp.lib.DP_ASK_TRIE
    sixteen = (lambda a: int(ipaddress.ip_address(a)) >> 16)
    assert index == {sixteen("198.51.0.0"): mixed, sixteen("203.0.0.0"): mixed,
                     **{sixteen(f"10.{i}.0.0"): 6 for i in range(4)}}


def test_the_116_index_names_whole_116s_and_sends_the_rest_to_the_trie() -> None:
    net = ipaddress.ip_address("2001:db8:5::").packed
    loose = ipaddress.ip_address("2001:db8::").packed
    assert xdp.v6_index([(BLOCK, 2)]) == {xdp.v6_fold(net): (net, xdp.lib.DP_ASK_TRIE),
                                          xdp.v6_fold(loose): (loose, xdp.lib.DP_ASK_TRIE)}
    whole = Block(name="w", interface="eth1", prefixes=(ipaddress.ip_network("2001:db8:9::1000/116"),), addresses=())
    nine = ipaddress.ip_address("2001:db8:9::1000").packed
    assert xdp.v6_index([(whole, 4)]) == {xdp.v6_fold(nine): (nine, 5)}


def test_two_networks_that_fold_alike_ask_the_trie() -> None:
    first = ipaddress.ip_network("2001:db8:9::1000/116")
    # The same fold: the second network's words xor to the first's.
    second = ipaddress.ip_network(f"{ipaddress.ip_address(int(first.network_address) ^ (0x10001 << 96))}/116")
    assert xdp.v6_fold(first.network_address.packed) == xdp.v6_fold(second.network_address.packed)
    blocks = [(Block(name=str(i), interface="eth1", prefixes=(net,), addresses=()), i)
              for i, net in enumerate((first, second))]
    assert xdp.v6_index(blocks) == {xdp.v6_fold(first.network_address.packed): (bytes(16), xdp.lib.DP_ASK_TRIE)}
