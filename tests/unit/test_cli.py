"""agentctl's buckets and owner verbs, from a status document: runs of owners, and a flow's bucket."""

from __future__ import annotations

import ipaddress

import pytest

from agent import cli
from agent.core.buckets import HashFields, bucket


def status(hash_mode: str = "sourceip", owners: list[list[int]] | None = None) -> dict:
    owners = owners if owners is not None else [[1]] * 3 + [[]] + [[2]] * 4
    return {
        "node": {"node_id": 1, "peers": [{"node_id": 2, "age_s": 0.02}],
                 "shared": {"blocks": {"web": {"generation": 4, "owners": owners,
                                               "peers": {"2": {"generation": 9}}}}}},
        "blocks": [{"name": "web", "l2": {"hash": hash_mode, "buckets": len(owners), "hash_seed": 7}}],
    }


def test_buckets_come_in_runs_with_each_owner_s_generation_and_view_age() -> None:
    table = cli.bucket_table(status(), None)["web"]
    assert [(r["first"], r["last"], r["owners"]) for r in table] == [(0, 2, [1]), (3, 3, []), (4, 7, [2])]
    assert table[2]["generations"] == [9] and table[2]["view_age_s"] == [0.02]
    text = cli.render_buckets({"web": table})
    assert "0-2       node 1 (generation 4" in text and "3         nobody (moving)" in text


def test_a_flow_s_bucket_is_the_kernel_s_and_ports_are_asked_for_when_hashed() -> None:
    doc = status("sourceip-sourceport")
    with pytest.raises(ValueError, match="give 1 port"):
        cli.flow_owner(doc, "192.0.2.9", [], None)
    found = cli.flow_owner(doc, "192.0.2.9", [40000, 443], None)
    assert found["bucket"] == bucket(HashFields.SOURCE_PORT, ipaddress.ip_address("192.0.2.9"), 40000, None, 8, 7)
    assert found["ports"] == [40000] and found["owners"] == doc["node"]["shared"]["blocks"]["web"]["owners"][
        found["bucket"]]


def test_unknown_or_missing_blocks_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="no active/active block 'db'"):
        cli.bucket_table(status(), "db")
    empty = status()
    empty["node"]["shared"] = {}
    with pytest.raises(ValueError, match="no active/active block is configured"):
        cli.flow_owner(empty, "192.0.2.9", [], None)


def test_watch_without_an_agent_exits_3_at_once(tmp_path, capsys) -> None:
    assert cli.main(["-s", str(tmp_path / "none.sock"), "status", "--watch", "--interval", "0.01"]) == 3
    assert "cannot reach dpagent" in capsys.readouterr().err


def test_watch_intervals_out_of_range_are_refused() -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["status", "--watch", "--interval", "0"])


def test_status_shows_bird_and_its_warning() -> None:
    routes = {"table": 199, "announced": {"ext": 256},
              "bird": {"running": True, "version": "2.0.12", "socket": "/run/bird/bird.ctl", "problem": "no protocol dpagent6",
                       "protocols": {"dpagent4": {"state": "up", "imported": 256}, "dpagent6": {"state": "missing"}}}}
    assert cli._bird_lines(routes) == [
        "bgp: BIRD 2.0.12 at /run/bird/bird.ctl: dpagent4 up (256 routes), dpagent6 missing",
        "  WARNING: no protocol dpagent6",
        "  table 199: ext 256 route(s)",
    ]
    down = {"running": False, "version": None, "socket": "/x", "problem": "no control socket at /x", "protocols": {}}
    assert cli._bird_lines({"bird": down}) == ["bgp: BIRD NOT RUNNING at /x", "  WARNING: no control socket at /x"]
    assert cli._bird_lines({"bird": None}) == []
