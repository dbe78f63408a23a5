"""The [conntrack] table: peers, ignored prefixes and protocols are checked, each error names its key."""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from pathlib import Path

from agent.config import load_config
from config_documents import error_lines, minimal, write


def with_conntrack(**table: object) -> dict:
    document = minimal()
    document["conntrack"] = {"interface": "eth2", "peers": ["192.0.2.2"], **table}
    return document


def test_absent_table_means_no_sync(workdir: Path) -> None:
    assert load_config(write(workdir, minimal())).conntrack is None


def test_defaults_and_values(workdir: Path) -> None:
    config = load_config(write(workdir, with_conntrack(ignore=["10.0.0.0/8", "2001:db8::1"], protocols=["tcp"],
                                                        mode="hot"))).conntrack
    assert config.interface == "eth2" and config.peers == (ip_address("192.0.2.2"),)
    assert config.port == 7789 and config.mode == "hot" and config.protocols == frozenset({6})
    assert config.ignore == (ip_network("10.0.0.0/8"), ip_network("2001:db8::1/128"))
    assert load_config(write(workdir, with_conntrack())).conntrack.protocols == frozenset({1, 6, 17, 33, 58, 132, 136})


def test_bad_values_name_their_key(workdir: Path) -> None:
    document = with_conntrack(ignore=["10.0.0.1/8", "192.0.2.0/24"], protocols=["tcp", "gre"],
                              peers=["198.51.100.1", "2001:db8::2"])
    assert [line.replace(str(workdir), "DIR") for line in error_lines(workdir, document)] == [
        'DIR/dpagent.toml: conntrack.peers[1] = "2001:db8::2": is IPv6, but 198.51.100.1 is IPv4: one link '
        'speaks one IP version',
        'DIR/dpagent.toml: conntrack.ignore[0] = "10.0.0.1/8": must be an IP address or prefix (no host bits)',
        'DIR/dpagent.toml: conntrack.ignore[1] = "192.0.2.0/24": holds block addresses: their flows are the ones '
        'to sync',
        'DIR/dpagent.toml: conntrack.protocols[1] = "gre": must be one of tcp, udp, icmp, icmpv6, sctp, dccp, udplite',
    ]


def test_peers_are_required(workdir: Path) -> None:
    document = minimal()
    document["conntrack"] = {"interface": "eth2"}
    assert [line.replace(str(workdir), "DIR") for line in error_lines(workdir, document)] == [
        "DIR/dpagent.toml: conntrack.peers: is required: the addresses of the other nodes on the sync interface"]
