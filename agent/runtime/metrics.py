"""Prometheus metrics of the daemon's status document, written by the standard client library.

A collector builds the metric families from the same status document `agentctl
status --json` shows, so the two can never disagree, and prometheus_client
(Debian's python3-prometheus-client) writes the exposition format. One
`dpagent_` prefix, base units, counters ending in `_total`; role numbers follow
keepalived-exporter (0 INIT .. 3 FAULT).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


def _version() -> str:
    try:
        return version("dpagent")
    except PackageNotFoundError:
        return "unknown"


class _Families:
    """The metric families of one scrape, in the order they are added."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def metric(self, name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
        labels = list(samples[0][0]) if samples else []
        family: Metric = (CounterMetricFamily(name.removesuffix("_total"), help_text, labels=labels)
                          if kind == "counter" else GaugeMetricFamily(name, help_text, labels=labels))
        for sample_labels, value in samples:
            family.add_metric([str(sample_labels[k]) for k in labels], value)
        self.families.append(family)


class StatusCollector:
    """A prometheus_client collector over whatever returns the current status document."""

    def __init__(self, status: Callable[[], dict]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        yield from families(self._status())


def render(status: dict) -> str:
    """The exposition text of one status document (`agentctl metrics`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(lambda: status))
    return generate_latest(registry).decode()


def families(status: dict) -> list[Metric]:
    node = status["node"]
    out = _Families()
    out.metric("dpagent_build_info", "gauge", "Build information.", [({"version": _version()}, 1)])
    out.metric("dpagent_state", "gauge", "Node state: 0 INIT, 1 BACKUP, 2 MASTER, 3 FAULT, 4 MAINTENANCE.",
               [({}, node["state"]["number"])])
    out.metric("dpagent_priority", "gauge", "Configured election priority.", [({}, node["priority"])])
    out.metric("dpagent_transitions_total", "counter", "State transitions since start.",
               [({}, status["state_changes"])])
    counters = node.get("counters", {})
    out.metric("dpagent_heartbeat_frames_sent_total", "counter", "Heartbeat frames sent.",
               [({}, counters.get("frames_sent", 0))])
    out.metric("dpagent_heartbeat_frames_received_total", "counter", "Valid heartbeat frames received.",
               [({}, counters.get("frames_received", 0))])
    out.metric("dpagent_heartbeat_frames_dropped_total", "counter", "Heartbeat frames dropped, by reason.",
               [({"reason": r}, n) for r, n in sorted(node.get("drops", {}).items())])
    out.metric("dpagent_peer_last_frame_age_seconds", "gauge", "Seconds since the last valid frame of a peer.",
               [({"peer": p["node_id"]}, p["age_s"]) for p in node.get("peers", [])])
    out.metric("dpagent_peer_alive", "gauge", "1 while a peer is heard within its dead interval.",
               [({"peer": p["node_id"]}, int(p.get("alive", True))) for p in node.get("peers", [])])
    out.metric("dpagent_peer_advert_loss_ratio", "gauge", "Measured loss of a peer's adverts on all links.",
               [({"peer": p["node_id"]}, p.get("loss", 0)) for p in node.get("peers", [])])
    out.metric("dpagent_peer_link_advert_loss_ratio", "gauge", "Measured loss of a peer's adverts, by link.",
               [({"peer": p["node_id"], "link": link}, loss)
                for p in node.get("peers", []) for link, loss in p.get("link_loss", {}).items()])
    out.metric("dpagent_peer_dead_interval_seconds", "gauge",
               "Silence after which the peer counts as dead, widened for its measured loss.",
               [({"peer": p["node_id"]}, p.get("dead_interval_s", 0)) for p in node.get("peers", [])])
    out.metric("dpagent_block_repaired_total", "counter",
               "Items of a held block found missing from the kernel and put back.",
               [({"block": name}, n) for name, n in sorted(status.get("repairs", {}).items())])
    out.metric("dpagent_release_retries_total", "counter", "Releases retried after a failure.",
               [({}, status.get("release_retries", 0))])
    out.metric("dpagent_heartbeat_send_errors_total", "counter", "Heartbeat send errors, by link.",
               [({"link": link["name"]}, link["send_errors"]) for link in status["links"]])
    out.metric("dpagent_block_addresses", "gauge", "Addresses in a block.",
               [({"block": b["name"]}, b["addresses"]) for b in status["blocks"]])
    out.metric("dpagent_block_held", "gauge", "1 if this node holds the block.",
               [({"block": b["name"]}, int(b["held"])) for b in status["blocks"]])
    shared = node.get("shared", {}).get("blocks", {})
    out.metric("dpagent_shared_buckets_owned", "gauge", "Flow buckets of an active/active block this node accepts.",
               [({"block": name}, len(b["applied"])) for name, b in sorted(shared.items())])
    out.metric("dpagent_shared_bucket_moves_total", "counter",
               "Buckets of an active/active block this node gained or gave up.",
               [({"block": name}, b["moves"]) for name, b in sorted(shared.items())])
    xdp = status.get("xdp", {})
    out.metric("dpagent_xdp_packets_total", "counter",
               "Frames the XDP cluster filter saw, by block and by what it did with them.",
               [({"block": name, "result": result}, n) for name, b in sorted(xdp.get("blocks", {}).items())
                for result, n in b.get("packets", {}).items()]
               + [({"block": "", "result": result}, n) for result, n in xdp.get("no_block_packets", {}).items()])
    out.metric("dpagent_xdp_attached", "gauge", "1 per interface the XDP cluster filter is attached to, by mode.",
               [({"interface": i, "mode": m}, 1) for i, m in sorted(xdp.get("attached", {}).items())])
    routes = status.get("routes", {})
    found = routes.get("bird")
    out.metric("dpagent_bird_up", "gauge",
               "1 if BIRD answered the last check and every kernel protocol of [bgp] was up; only with BGP blocks.",
               [({}, int(found["running"] and not found["problem"]))] if found else [])
    out.metric("dpagent_bird_protocol_up", "gauge", "1 per kernel protocol of [bgp] that BIRD has up.",
               [({"protocol": name}, int(p["state"] == "up" and p.get("proto") == "Kernel"))
                for name, p in sorted((found or {}).get("protocols", {}).items())])
    out.metric("dpagent_bgp_routes", "gauge", "Companion routes this node has in table 199 for BIRD, by block.",
               [({"block": name}, n) for name, n in sorted(routes.get("announced", {}).items())])
    announce = status["announce"]
    out.metric("dpagent_announce_frames_total", "counter", "GARP/NA frames sent.", [({}, announce["frames_sent"])])
    out.metric("dpagent_announce_send_errors_total", "counter", "GARP/NA send errors, by errno.",
               [({"errno": e}, n) for e, n in sorted(announce["send_errors_by_errno"].items())])
    out.metric("dpagent_announce_last_duration_seconds", "gauge", "Duration of the last announcement round.",
               [({}, announce["last_duration_s"] or 0)])
    out.metric("dpagent_control_errors_total", "counter", "Rejected control socket requests, by reason.",
               [({"reason": r}, n) for r, n in sorted(status["control_errors"].items())])
    out.metric("dpagent_loop_lag_max_seconds", "gauge", "Worst event-loop timer lag seen.",
               [({}, status["loop"]["max_lag_s"])])
    out.metric("dpagent_loop_stalls_total", "counter", "Timer firings late by more than one advert interval.",
               [({}, status["loop"]["stalls"])])
    if "conntrack" in status:
        _conntrack(out, status["conntrack"])
    return out.families


def _conntrack(out: _Families, ct: dict) -> None:
    """The sync's figures; dpagent_conntrack_peer_in_sync is the one to alarm on."""
    counters = ct.get("counters", {})
    peers = ct.get("peers", {})
    out.metric("dpagent_conntrack_cache_entries", "gauge", "Entries in the cache of the peers' tables.",
               [({}, ct["cache_entries"] or 0)])
    out.metric("dpagent_conntrack_cache_bytes", "gauge", "Bytes the cache takes.", [({}, ct["cache_bytes"] or 0)])
    out.metric("dpagent_conntrack_kernel_entries", "gauge", "Entries in this node's conntrack table.",
               [({}, ct["kernel"].get("count") or 0)])
    out.metric("dpagent_conntrack_events_total", "counter", "Conntrack events read from the kernel.",
               [({}, counters.get("events", 0))])
    out.metric("dpagent_conntrack_overruns_total", "counter",
               "Event socket overruns (ENOBUFS: events lost, answered by a full resync).",
               [({}, counters.get("overruns", 0))])
    out.metric("dpagent_conntrack_records_received_total", "counter", "Records received from the peers.",
               [({}, counters.get("records_received", 0))])
    out.metric("dpagent_conntrack_resyncs_total", "counter", "Full tables sent to and received from peers.",
               [({"direction": "sent"}, counters.get("resyncs_sent", 0)),
                ({"direction": "received"}, counters.get("resyncs_received", 0))])
    out.metric("dpagent_conntrack_frames_dropped_total", "counter", "Sync frames dropped, by reason.",
               [({"reason": r}, n) for r, n in sorted(ct.get("drops", {}).items())])
    out.metric("dpagent_conntrack_peer_in_sync", "gauge",
               "1 while a peer's copy and ours are complete and current (nothing late, no gap, no resync due).",
               [({"peer": p}, int(v.get("in_sync", False))) for p, v in sorted(peers.items())])
    out.metric("dpagent_conntrack_peer_lag_seconds", "gauge", "Age of the oldest frame the peer has not acked.",
               [({"peer": p}, v.get("lag_s", 0)) for p, v in sorted(peers.items())])
    out.metric("dpagent_conntrack_peer_resent_frames_total", "counter", "Sync frames sent to a peer again.",
               [({"peer": p}, v.get("frames_resent", 0)) for p, v in sorted(peers.items())])
    replay = ct.get("last_replay") or {}
    out.metric("dpagent_conntrack_replays_total", "counter", "Cache replays into the kernel.",
               [({}, ct.get("replays", 0))])
    out.metric("dpagent_conntrack_last_replay_seconds", "gauge", "Duration of the last replay.",
               [({}, replay.get("seconds", 0))])
    out.metric("dpagent_conntrack_last_replay_entries", "gauge", "Entries the last replay wrote.",
               [({}, replay.get("applied", 0))])
