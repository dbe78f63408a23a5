"""agent.core.clusterset: the cluster filter's nft text and its ownership transactions."""

from __future__ import annotations

import struct

import pytest

from agent.core import clusterset, ruleset
from agent.core.buckets import HashFields


def test_the_filter_hashes_the_outside_peers_side_and_drops_what_no_bucket_owns() -> None:
    text = clusterset.add_block("ext", "eth1", "01:00:5E:00:01:01", HashFields.SOURCE_PORT, 256, 0x5EED)
    rules = [line for line in text.splitlines() if line.startswith("add rule netdev dpagent ingress.ext")]
    assert rules == [
        "add rule netdev dpagent ingress.ext ether daddr 01:00:5e:00:01:01 meta protocol ip "
        "jhash ip saddr . th sport mod 256 seed 0x5eed vmap @buckets.ext",
        "add rule netdev dpagent ingress.ext ether daddr 01:00:5e:00:01:01 meta protocol ip6 "
        "jhash ip6 saddr . th sport mod 256 seed 0x5eed vmap @buckets.ext",
        "add rule netdev dpagent ingress.ext ether daddr 01:00:5e:00:01:01 meta protocol arp accept",
        "add rule netdev dpagent ingress.ext ether daddr 01:00:5e:00:01:01 drop",
    ]
    assert "add rule netdev dpagent owned.ext meta pkttype set host accept" in text
    # Whatever was there goes first, in the same transaction.
    assert text.startswith(clusterset.remove_block("ext"))


@pytest.mark.parametrize("bad", [{"interface": 'eth1" ; flush ruleset ; "'}, {"mac": "01:00:5e"},
                                 {"block": "a b"}, {"buckets": 0}])
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
