"""agent.config: [block.announce] via and the [bgp] table, every error naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import BgpConfig, load_config
from config_documents import minimal, one_error, write


def with_bgp(bgp: dict | None = None, via: str | None = None) -> dict:
    document = minimal()
    if bgp is not None:
        document["bgp"] = bgp
    if via is not None:
        document["block"][0]["announce"] = {"via": via}
    return document


def test_defaults_announce_on_the_segment_only(workdir: Path) -> None:
    config = load_config(write(workdir, minimal()))
    assert config.blocks[0].announce.via == "l2"
    assert not config.blocks[0].routed
    assert config.bgp == BgpConfig(Path("/run/bird/bird.ctl"), ("dpagent4", "dpagent6"))


@pytest.mark.parametrize("via, routed", [("l2", False), ("bgp", True), ("both", True)])
def test_via(workdir: Path, via: str, routed: bool) -> None:
    block = load_config(write(workdir, with_bgp(via=via))).blocks[0]
    assert block.announce.via == via
    assert block.routed is routed


def test_bgp_table_relative_socket_and_own_protocols(workdir: Path) -> None:
    config = load_config(write(workdir, with_bgp({"bird_socket": "bird.ctl", "protocols": ["k199"]}, "bgp")))
    assert config.bgp == BgpConfig(workdir / "bird.ctl", ("k199",))


@pytest.mark.parametrize("document, expected", [
    (with_bgp(via="ospf"), 'block[0].announce.via = "ospf": must be "l2" or "bgp" or "both"'),
    (with_bgp(via=1), 'block[0].announce.via = 1: must be a string'),  # type: ignore[arg-type]
    (with_bgp({"bird_socket": ""}), 'bgp.bird_socket = "": must be a path'),
    (with_bgp({"protocols": []}), "bgp.protocols = []: must name at least one BIRD kernel protocol"),
    (with_bgp({"protocols": "dpagent4"}), 'bgp.protocols = "dpagent4": must be a list of strings'),
    (with_bgp({"protocols": ["4dp"]}),
     "bgp.protocols[0] = \"4dp\": must be a BIRD protocol name: a letter, then up to 63 letters, digits or '_'"),
    (with_bgp({"protocols": ['k"; rm']}),
     "bgp.protocols[0] = \"k\\\"; rm\": must be a BIRD protocol name: a letter, then up to 63 letters, digits or '_'"),
    (with_bgp({"protocols": ["a", "a"]}), 'bgp.protocols[1] = "a": is listed twice'),
    (with_bgp({"protocols": ["a", "b", "c", "d", "e"]}),
     'bgp.protocols = ["a", "b", "c", "d", "e"]: must name at most 4 protocols'),
    (with_bgp({"protocols": [7]}), "bgp.protocols[0] = 7: must be a string"),
    (with_bgp({"socket": "x"}), 'bgp.socket = "x": unknown key (did you mean "bird_socket"?)'),
    ({**minimal(), "bgp": "on"}, 'bgp = "on": must be a table'),
])
def test_errors_name_the_key(workdir: Path, document: dict, expected: str) -> None:
    assert one_error(workdir, document) == f"DIR/dpagent.toml: {expected}"


def test_socket_path_too_long_for_a_unix_socket(workdir: Path) -> None:
    line = one_error(workdir, with_bgp({"bird_socket": "/" + "s" * 120}))
    assert line.startswith('DIR/dpagent.toml: bgp.bird_socket = "/sss')
    assert line.endswith(": must be at most 107 bytes long (a Unix socket path)")
