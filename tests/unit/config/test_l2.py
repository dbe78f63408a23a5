"""[block.l2]: the L2 mode's settings, and what may not be shared between blocks."""

from __future__ import annotations

from pathlib import Path

from agent.config import load_config
from agent.config.schema import MAX_XDP_BLOCKS
from config_documents import minimal, one_error, write


def with_blocks(*blocks: dict) -> dict:
    document = minimal()
    document["block"] = list(blocks)
    return document


def block(name: str, addresses: list[str], **l2: object) -> dict:
    return {"name": name, "interface": "eth1", "addresses": addresses, "l2": l2}


def test_garp_is_the_default_and_vmac_gets_the_vrrp_mac_of_its_ip_version(workdir: Path) -> None:
    config = load_config(write(workdir, with_blocks(
        {"name": "plain", "interface": "eth1", "addresses": ["192.0.2.9"]},
        block("v4", ["192.0.2.10"], mode="vmac", vrid=51),
        block("v6", ["2001:db8::10"], mode="vmac", vrid=51))))
    plain, v4, v6 = config.blocks
    assert (plain.l2.mode, plain.l2.mac) == ("garp", None)
    assert v4.l2.mac == "00:00:5e:00:01:33"
    assert v6.l2.mac == "00:00:5e:00:02:33"


def test_vmac_needs_a_vrid(workdir: Path) -> None:
    assert one_error(workdir, with_blocks(block("b", ["192.0.2.10"], mode="vmac"))) == (
        "DIR/dpagent.toml: block[0].l2.vrid: is required with mode vmac")


def test_a_vmac_block_holds_one_ip_version(workdir: Path) -> None:
    line = one_error(workdir, with_blocks(block("b", ["192.0.2.10", "2001:db8::1"], mode="vmac", vrid=3)))
    assert line.startswith('DIR/dpagent.toml: block[0].l2.mode = "vmac": a vmac block holds addresses of one IP version')


def test_two_blocks_never_share_a_vrid_or_a_cluster_mac(workdir: Path) -> None:
    assert one_error(workdir, with_blocks(block("a", ["192.0.2.10"], mode="vmac", vrid=7),
                                          block("b", ["192.0.2.11"], mode="vmac", vrid=7))) == (
        "DIR/dpagent.toml: block[1].l2.vrid = 7: already used by block a")
    assert one_error(workdir, with_blocks(block("a", ["192.0.2.10"], mode="cluster-mac"),
                                          block("b", ["192.0.2.11"], mode="cluster-mac"))) == (
        'DIR/dpagent.toml: block[1].l2.cluster_mac = "01:00:5e:00:01:01": already used by block a')
    # One VRID per IP version, as VRRP: the MACs differ.
    load_config(write(workdir, with_blocks(block("a", ["192.0.2.10"], mode="vmac", vrid=7),
                                           block("b", ["2001:db8::1"], mode="vmac", vrid=7))))


def test_the_cluster_mac_is_a_multicast_mac(workdir: Path) -> None:
    assert one_error(workdir, with_blocks(block("a", ["192.0.2.10"], mode="cluster-mac", cluster_mac="02:00:00:00:00:01"))) == (
        'DIR/dpagent.toml: block[0].l2.cluster_mac = "02:00:00:00:00:01": must be a multicast MAC '
        "(lowest bit of the first octet set), so that every node receives it")
    assert one_error(workdir, with_blocks(block("a", ["192.0.2.10"], mode="cluster-mac", cluster_mac="01:00:5e"))) == (
        'DIR/dpagent.toml: block[0].l2.cluster_mac = "01:00:5e": must be a MAC address like 01:00:5e:00:01:01')
    config = load_config(write(workdir, with_blocks(block("a", ["192.0.2.10"], mode="cluster-mac",
                                                          cluster_mac="01-00-5E-00-01-0A"))))
    assert config.blocks[0].l2.mac == "01:00:5e:00:01:0a"


def test_the_xdp_backend_is_a_cluster_mac_filter(workdir: Path) -> None:
    assert one_error(workdir, with_blocks(block("a", ["192.0.2.10"], mode="vmac", vrid=3, backend="xdp"))) == (
        'DIR/dpagent.toml: block[0].l2.backend = "xdp": is a cluster-mac filter: it needs mode cluster-mac')
    config = load_config(write(workdir, with_blocks(block("a", ["192.0.2.10"], mode="cluster-mac", backend="xdp"),
                                                    block("b", ["192.0.2.11"]))))
    assert [b.l2.backend for b in config.blocks] == ["xdp", "nft"]


def test_one_xdp_filter_serves_64_blocks(workdir: Path) -> None:
    blocks = [block(f"b{i}", [f"192.0.2.{i + 1}"], mode="cluster-mac", backend="xdp",
                    cluster_mac=f"01:00:5e:00:02:{i:02x}") for i in range(MAX_XDP_BLOCKS + 1)]
    assert one_error(workdir, with_blocks(*blocks)) == (
        f'DIR/dpagent.toml: block[{MAX_XDP_BLOCKS}].l2.backend = "xdp": one XDP filter serves at most '
        f"{MAX_XDP_BLOCKS} blocks")
    load_config(write(workdir, with_blocks(*blocks[:MAX_XDP_BLOCKS])))


def test_active_active_needs_a_cluster_mac_and_carries_a_weight(workdir: Path) -> None:
    line = one_error(workdir, with_blocks({"name": "a", "interface": "eth1", "addresses": ["192.0.2.10"],
                                           "mode": "active-active"}))
    assert line == ('DIR/dpagent.toml: block[0].mode = "active-active": needs [block.l2] mode cluster-mac: '
                    "every node must receive the block's frames")
    config = load_config(write(workdir, with_blocks({**block("a", ["192.0.2.10"], mode="cluster-mac"),
                                                     "mode": "active-active", "weight": 2.5},
                                                    block("b", ["192.0.2.11"]))))
    assert [(b.shared, b.weight) for b in config.blocks] == [(True, 2.5), (False, 1.0)]


def test_active_active_views_must_fit_one_heartbeat_frame(workdir: Path) -> None:
    def shared(i: int, buckets: int) -> dict:
        return {**block(f"b{i}", [f"192.0.2.{i + 1}"], mode="cluster-mac", buckets=buckets,
                        cluster_mac=f"01:00:5e:00:03:{i:02x}"), "mode": "active-active"}
    # 1,024 buckets take 384 bytes with eight nodes: three blocks fit, a fourth does not.
    load_config(write(workdir, with_blocks(*(shared(i, 1024) for i in range(3)))))
    assert one_error(workdir, with_blocks(*(shared(i, 1024) for i in range(4)))) == (
        "DIR/dpagent.toml: block[3].l2.buckets = 1024: the active/active blocks' bucket views no longer fit "
        "in one 1452-byte heartbeat frame: give them fewer buckets")
