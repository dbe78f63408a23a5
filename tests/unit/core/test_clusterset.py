"""agent.core.clusterset: the cluster filter's nft text and its ownership transactions."""

from __future__ import annotations

import struct

import pytest

from agent.core import clusterset, ruleset
from agent.core.buckets import HashFields


def test_the_filter_hashes_the_outside_peers_side_and_drops_what_no_bucket_owns() -> None:
    text = clusterset.add_block("ext", "eth1", "01:00:5E:00:01:01", HashFields.SOURCE, 256, 0x5EED)
    rules = [line for line in text.splitlines() if line.startswith("add rule netdev dpagent ingress.ext")]
    assert rules == [
        "add rule netdev dpagent ingress.ext ether daddr 01:00:5e:00:01:01 meta protocol ip "
        "jhash ip saddr mod 256 seed 0x5eed vmap @buckets.ext",
        "add rule netdev dpagent ingress.ext ether daddr 01:00:5e:00:01:01 meta protocol ip6 "
        "jhash ip6 saddr mod 256 seed 0x5eed vmap @buckets.ext",
        "add rule netdev dpagent ingress.ext ether daddr 01:00:5e:00:01:01 meta protocol arp accept",
        "add rule netdev dpagent ingress.ext ether daddr 01:00:5e:00:01:01 drop",
    ]
    assert "add rule netdev dpagent owned.ext meta pkttype set host accept" in text
    # Whatever was there goes first, in the same transaction.
    assert text.startswith(clusterset.remove_block("ext"))


@pytest.mark.parametrize(("fields", "ports"), [(HashFields.SOURCE_PORT, ". th sport"),
                                               (HashFields.SOURCE_PORTS, ". th sport . th dport")])
def test_ports_are_hashed_only_for_tcp_and_udp_that_are_no_fragments(fields: HashFields, ports: str) -> None:
    """buckets.flow_fields() as rules: ports for unfragmented TCP and UDP, then fragments and
    then every other protocol by source alone. A vmap miss goes on to the next rule, so no
    packet the first rule hashes with ports may match the other two."""
    text = clusterset.add_block("ext", "eth1", "01:00:5e:00:01:01", fields, 256, 0x5EED)
    prefix = "add rule netdev dpagent ingress.ext ether daddr 01:00:5e:00:01:01 "
    rules = [line.removeprefix(prefix) for line in text.splitlines() if line.startswith(prefix)]
    assert rules == [
        "meta protocol ip ip frag-off & 0x3fff == 0 meta l4proto { tcp, udp } "
        f"jhash ip saddr {ports} mod 256 seed 0x5eed vmap @buckets.ext",
        "meta protocol ip ip frag-off & 0x3fff != 0 jhash ip saddr mod 256 seed 0x5eed vmap @buckets.ext",
        "meta protocol ip meta l4proto != { tcp, udp } jhash ip saddr mod 256 seed 0x5eed vmap @buckets.ext",
        "meta protocol ip6 exthdr frag missing meta l4proto { tcp, udp } "
        f"jhash ip6 saddr {ports} mod 256 seed 0x5eed vmap @buckets.ext",
        "meta protocol ip6 exthdr frag exists jhash ip6 saddr mod 256 seed 0x5eed vmap @buckets.ext",
        "meta protocol ip6 meta l4proto != { tcp, udp } jhash ip6 saddr mod 256 seed 0x5eed vmap @buckets.ext",
        "meta protocol arp accept",
        "drop",
    ]
    # The hash text is hash_expression()'s, the one the bucket parity test holds to the kernel.
    assert clusterset.hash_expression(fields, "ip6", 256, 0x5EED) in rules[3]
    assert clusterset.hash_expression(HashFields.SOURCE, "ip", 256, 0x5EED) in rules[1]


@pytest.mark.parametrize("bad", [{"interface": 'eth1" ; flush ruleset ; "'}, {"mac": "01:00:5e"},
                                 {"block": "a b"}, {"buckets": 0}, {"fields": "sourceip"}])
def test_nothing_unchecked_reaches_the_nft_language(bad: dict) -> None:
    args = {"block": "ext", "interface": "eth1", "mac": "01:00:5e:00:01:01", "fields": HashFields.SOURCE,
            "buckets": 16, "seed": 1} | bad
    with pytest.raises(ValueError):
        clusterset.add_block(**args)


def test_an_ownership_change_is_a_flush_and_the_owned_buckets_in_one_batch() -> None:
    data, acked = clusterset.ownership_batch("ext", [0, 7, 255], 10)
    messages = []
    offset = 0
    while offset < len(data):
        length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
        messages.append((kind, seq))
        offset += length
    subsys = ruleset.NFNL_SUBSYS_NFTABLES << 8
    assert messages == [(ruleset.NFNL_MSG_BATCH_BEGIN, 10), (subsys | ruleset.NFT_MSG_DELSETELEM, 11),
                        (subsys | ruleset.NFT_MSG_NEWSETELEM, 12), (ruleset.NFNL_MSG_BATCH_END, 13)]
    assert sorted(acked) == [11, 12]
    # The added elements read back as the buckets asked for (the dump's parser on the same attributes).
    add = data[struct.unpack_from("=I", data, 0)[0] + struct.unpack_from("=I", data, 20)[0]:]
    assert clusterset.owned_buckets(add[20:]) == [0, 7, 255]
    _data, acked = clusterset.ownership_batch("ext", [], 10)
    assert list(acked) == [11]
