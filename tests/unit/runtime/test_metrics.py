"""agent.runtime.metrics: the status document as Prometheus metrics, read back with the client's parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from agent.runtime.metrics import render

STATUS = {
    "node": {"state": {"name": "MASTER", "number": 2}, "priority": 150,
             "counters": {"frames_sent": 10, "frames_received": 9}, "drops": {"auth": 2},
             "peers": [{"node_id": 2, "age_s": 0.03, "alive": True, "loss": 0.0, "link_loss": {"hb0": 0.0},
                        "dead_interval_s": 0.1625}],
             "shared": {"blocks": {"web": {"applied": [1, 2, 3], "moves": 7}}}},
    "state_changes": 2, "repairs": {"ext": 1}, "release_retries": 0,
    "links": [{"name": "hb0", "send_errors": 0}],
    "blocks": [{"name": "ext", "addresses": 65536, "held": True}],
    "announce": {"frames_sent": 131072, "send_errors_by_errno": {}, "last_duration_s": 0.31},
    "control_errors": {}, "loop": {"max_lag_s": 0.002, "stalls": 0},
    "routes": {"table": 199, "announced": {"ext": 1},
               "bird": {"running": True, "problem": "dpagent6 is down",
                        "protocols": {"dpagent4": {"proto": "Kernel", "state": "up"},
                                      "dpagent6": {"proto": "Kernel", "state": "down"}}}},
    "xdp": {"attached": {"eth1": "native"},
            "blocks": {"ext": {"packets": {"passed": 5, "dropped": 6}}}, "no_block_packets": {"not_block": 9}},
}


def parsed() -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(render(STATUS))}


def samples(name: str) -> dict[tuple, float]:
    found = {}
    for family in text_string_to_metric_families(render(STATUS)):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_every_family_has_the_prefix_a_type_and_help() -> None:
    families = parsed()
    assert families and all(name.startswith("dpagent_") and f.documentation for name, f in families.items())
    assert families["dpagent_heartbeat_frames_sent"].type == "counter"
    assert families["dpagent_state"].type == "gauge"


def test_counters_end_in_total_and_values_come_from_the_status_document() -> None:
    assert samples("dpagent_heartbeat_frames_sent_total") == {(): 10.0}
    assert samples("dpagent_heartbeat_frames_dropped_total") == {(("reason", "auth"),): 2.0}
    assert samples("dpagent_state") == {(): 2.0}
    assert samples("dpagent_block_addresses") == {(("block", "ext"),): 65536.0}
    assert samples("dpagent_shared_buckets_owned") == {(("block", "web"),): 3.0}
    assert samples("dpagent_xdp_packets_total")[(("block", "ext"), ("result", "dropped"))] == 6.0
    assert samples("dpagent_xdp_attached") == {(("interface", "eth1"), ("mode", "native")): 1.0}
    ((labels, one),) = samples("dpagent_build_info").items()
    assert dict(labels).keys() == {"version"} and one == 1.0


def test_bird_and_its_protocols() -> None:
    assert samples("dpagent_bird_up") == {(): 0.0}
    assert samples("dpagent_bird_protocol_up") == {(("protocol", "dpagent4"),): 1.0, (("protocol", "dpagent6"),): 0.0}
    assert samples("dpagent_bgp_routes") == {(("block", "ext"),): 1.0}
