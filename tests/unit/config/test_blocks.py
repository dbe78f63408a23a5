"""agent.config.blocks: address files, folding within a block, overlaps between blocks, the caps,
and that no error shows a line of a file that may hold a secret."""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from pathlib import Path

from agent.config import blocks, load_config
from config_documents import SECRET, error_lines, minimal, one_error, write


def test_classic_address_file_loads_unchanged(workdir: Path) -> None:
    classic = (
        b"# external addresses of fw1\r\n"
        b"\r\n"
        b"198.51.100.10\r\n"
        b"   198.51.100.11   \r\n"
        b"\t198.51.100.12\t# mail\r\n"
        b"#198.51.100.99\r\n"
        b"198.51.100.10\r\n"
        b"2001:db8::1 # v6 too\r\n"
        b"   \r\n"
        b"198.51.100.13"
    )
    (workdir / "eth1.addr.external").write_bytes(classic)
    document = minimal()
    document["block"][0] = {"name": "ext", "interface": "eth1", "address_files": ["eth1.addr.external"]}
    block = load_config(write(workdir, document)).blocks[0]
    assert [str(a) for a in block.addresses] == [
        "198.51.100.10", "198.51.100.11", "198.51.100.12", "198.51.100.13", "2001:db8::1"]


def test_folding_within_a_block(workdir: Path) -> None:
    document = minimal()
    document["block"][0]["prefixes"] = ["198.18.0.0/16", "198.18.4.0/24", "198.18.0.0/16"]
    document["block"][0]["addresses"] = ["198.18.9.9", "192.0.2.1", "192.0.2.1"]
    block = load_config(write(workdir, document)).blocks[0]
    assert block.prefixes == (ip_network("198.18.0.0/16"),)
    assert block.addresses == (ip_address("192.0.2.1"),)
    assert block.address_count == 65537


def test_address_file_errors(workdir: Path) -> None:
    (workdir / "bad.addr").write_text("# header\n192.0.2.20\r\nnot-an-ip # oops\n\n2001:db8::zz\n")
    document = minimal()
    document["block"][0]["address_files"] = ["bad.addr", "missing.addr", "."]
    assert error_lines(workdir, document) == [
        f"{workdir}/dpagent.toml: block[0].address_files[0] = \"bad.addr\": {workdir}/bad.addr:3: 'not-an-ip': not an IP address",
        f"{workdir}/dpagent.toml: block[0].address_files[0] = \"bad.addr\": {workdir}/bad.addr:5: '2001:db8::zz': not an IP address",
        f'{workdir}/dpagent.toml: block[0].address_files[1] = "missing.addr": cannot read: No such file or directory',
        f'{workdir}/dpagent.toml: block[0].address_files[2] = ".": cannot read: not a regular file',
    ]


def test_overlapping_blocks(workdir: Path) -> None:
    (workdir / "b.addr").write_text("198.51.100.1\n203.0.113.5\n")
    document = minimal()
    document["block"] = [
        {"name": "a", "interface": "eth1", "prefixes": ["198.18.0.0/16", "2001:db8::/116"],
         "addresses": ["198.51.100.1"]},
        {"name": "b", "interface": "eth1", "prefixes": ["198.18.7.0/24", "2001:db8::100/120"],
         "addresses": ["198.18.200.1"], "address_files": ["b.addr"]},
    ]
    assert [line.replace(str(workdir), "DIR") for line in error_lines(workdir, document)] == [
        'DIR/dpagent.toml: block[1].prefixes[0] = "198.18.7.0/24": overlaps 198.18.0.0/16 of block "a" (block[0].prefixes[0])',
        'DIR/dpagent.toml: block[1].prefixes[1] = "2001:db8::100/120": overlaps 2001:db8::/116 of block "a" (block[0].prefixes[1])',
        'DIR/dpagent.toml: block[1].addresses[0] = "198.18.200.1": inside 198.18.0.0/16 of block "a" (block[0].prefixes[0])',
        'DIR/dpagent.toml: block[1].address_files[0] = "198.51.100.1": DIR/b.addr:1: also in block "a" (block[0].addresses[0])',
    ]


def test_loose_address_inside_later_block_prefix(workdir: Path) -> None:
    document = minimal()
    document["block"].append({"name": "big", "interface": "eth1", "prefixes": ["192.0.2.0/24"]})
    assert one_error(workdir, document) == (
        'DIR/dpagent.toml: block[0].addresses[0] = "192.0.2.10": inside 192.0.2.0/24 of block "big" (block[1].prefixes[0])')



# --- what an error may show of an address file -------------------------------------------


def file_errors(workdir: Path, name: str, content: str, mode: int) -> list[str]:
    """The errors of a config whose only block reads the address file `name`, DIR for the directory."""
    path = workdir / name
    path.write_text(content)
    path.chmod(mode)
    document = minimal()
    document["block"][0] = {"name": "ext", "interface": "eth1", "address_files": [name]}
    return [line.replace(str(workdir), "DIR") for line in error_lines(workdir, document)]


def test_the_key_file_named_as_an_address_file_is_never_shown(workdir: Path) -> None:
    assert file_errors(workdir, "key", f"1 {SECRET}\n", 0o600) == [
        'DIR/dpagent.toml: block[0].address_files[0] = "key": DIR/key:1: not an IP address']


def test_lines_of_a_file_others_cannot_read_are_never_shown(workdir: Path) -> None:
    assert file_errors(workdir, "ext.addr", "192.0.2.20\nnot-an-ip\n", 0o640) == [
        'DIR/dpagent.toml: block[0].address_files[0] = "ext.addr": DIR/ext.addr:2: not an IP address']


def test_no_line_of_a_file_with_a_key_line_is_shown(workdir: Path) -> None:
    """Readable by all, but it holds what looks like a secret: show no line of it."""
    assert file_errors(workdir, "ext.addr", f"not-an-ip\n192.0.2.20\n7 {SECRET.upper()}\n", 0o644) == [
        'DIR/dpagent.toml: block[0].address_files[0] = "ext.addr": DIR/ext.addr:1: not an IP address',
        'DIR/dpagent.toml: block[0].address_files[0] = "ext.addr": DIR/ext.addr:3: not an IP address',
    ]


def test_a_long_bad_line_is_cut_short(workdir: Path) -> None:
    line = "x" * 10_000
    assert file_errors(workdir, "ext.addr", line + "\n", 0o644) == [
        f'DIR/dpagent.toml: block[0].address_files[0] = "ext.addr": DIR/ext.addr:1: {line[:77]!r}...: not an IP address']


# --- caps ----------------------------------------------------------------------------------


def test_loose_addresses_are_capped_across_all_blocks(workdir: Path, monkeypatch) -> None:
    monkeypatch.setattr(blocks, "MAX_LOOSE_ADDRESSES", 4)
    (workdir / "a.addr").write_text("192.0.2.1\n192.0.2.2\n192.0.2.1\n")  # with 192.0.2.10: 3
    (workdir / "b.addr").write_text("192.0.2.3\n192.0.2.4\n")
    document = minimal()
    document["block"][0]["address_files"] = ["a.addr"]
    document["block"].append({"name": "b", "interface": "eth1", "addresses": ["192.0.2.5"],
                              "address_files": ["b.addr", "missing.addr"]})
    assert one_error(workdir, document) == (
        'DIR/dpagent.toml: block[1].address_files[0] = "b.addr": DIR/b.addr:1: more than 4 single addresses in all'
        " blocks together: give large ranges as prefixes")
    del document["block"][1]["address_files"]
    assert load_config(write(workdir, document)).blocks[1].address_count == 1
    document["block"][1]["addresses"].append("192.0.2.6")
    assert one_error(workdir, document) == (
        'DIR/dpagent.toml: block[1].addresses[1] = "192.0.2.6": more than 4 single addresses in all'
        " blocks together: give large ranges as prefixes")


def test_ipv6_addresses_are_capped_per_block(workdir: Path) -> None:
    document = minimal()
    document["block"][0].update(prefixes=["2001:db8::/116"], addresses=["192.0.2.10", "2001:db8:1::1"])
    assert one_error(workdir, document) == (
        "DIR/dpagent.toml: block[0]: has 4,097 IPv6 addresses, at most 4,096 per block"
        " (each is one interface address, added one at a time)")
    document["block"][0]["addresses"] = ["192.0.2.10"]
    assert load_config(write(workdir, document)).blocks[0].address_count == 4097


def test_ipv6_addresses_are_capped_in_all_blocks_together(workdir: Path) -> None:
    document = minimal()
    document["block"] += [{"name": f"v6-{i}", "interface": "eth1", "prefixes": [f"2001:db8:{i}::/116"]}
                          for i in range(16)]
    assert one_error(workdir, document) == (
        "DIR/dpagent.toml: block: 65,536 IPv6 addresses in all blocks, at most 16,384"
        " (each is one interface address, added one at a time)")
    del document["block"][5:]
    assert len(load_config(write(workdir, document)).blocks) == 5
