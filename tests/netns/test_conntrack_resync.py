"""Full-table resyncs on the real kernel: a backup that starts after the flows exist gets them
all, an operator's flush and resync refill its cache, and an event storm that overflows the
master's event socket (ENOBUFS) still ends with the backup holding exactly the master's table.

Entries are made in the master's kernel by bench/ct_writer.c (TCP ESTABLISHED, as a busy
firewall's table holds them), beside a few real flows forwarded through the pair. The
yardstick is the master's own table, dumped and filtered as its agent filters (tests/ctlab.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from agent.lab import NODES, SERVER_INT, Lab
from ctlab import (
    agentctl, build_writer, cached, conntrack_config, conntrack_stats, kernel_count, logs, sync_filter,
    synced_count, table_limit, transitions, wait, write_entries,
)

pytestmark = pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("conntrack")),
                                reason="needs gcc (bench/ct_writer.c) and conntrack")

BLOCK = "198.18.0.0/28"
PORT = 9100
STREAMS = 3
ENTRIES = 10_000
STORM = 200_000
# Room in the table for what the nodes have beside the storm.
HEADROOM = 1000
# The smallest event buffer the schema allows: a burst of CT_NEW overflows it at once.
SMALL_EVENT_BUFFER = 1 << 20
# Adverts every 0.5 s (dead after 1.6 s): on two loaded cores a storm's CPU load alone must not
# stall a loop past the peer's deadline, which would be a self-fence and a failover mid-test.
ADVERT = 0.5


def start(lab: Lab, node: int, state: str, config) -> None:
    lab.start_agent(node, config)
    lab.wait_state(node, state, timeout=60)


def report(lab: Lab, filter) -> str:
    """What the two agents and fw1's table say, for a failure message."""
    return json.dumps({"master_synced": synced_count(lab, 1, filter), "fw1_stats": conntrack_stats(lab, 1),
                       "fw2_stats": conntrack_stats(lab, 2)})[:3000] + logs(lab, 1, 2)


def converged(lab: Lab, filter, at_least: int):
    """fw2's cache holds what fw1's agent would send it, and at least `at_least` entries."""
    def check() -> bool:
        have = cached(lab, 2)
        return have is not None and have >= at_least and have == synced_count(lab, 1, filter)
    return check


def create_at_once(lab: Lab, writer, count: int, offset: int) -> None:
    """`count` entries from two writers running side by side in fw1 (disjoint ranges, from `offset`)."""
    half = count // 2
    runs = [lab.spawn("fw1", [str(writer), str(half), str(offset + i * half), "1024", "3600"],
                      stdout=subprocess.PIPE, text=True) for i in range(2)]
    for run in runs:
        out, _ = run.communicate(timeout=120)
        done = json.loads(out)
        assert done["applied"] == half and not done["errors"], done


def test_a_late_backup_gets_the_whole_table_and_a_flush_is_refilled_by_resync(lab: Lab) -> None:
    lab.route_through_cluster()
    start(lab, 1, "MASTER", lab.write_config(1, block=BLOCK, advert_interval=ADVERT, conntrack="cache",
                                            extra=lab.inside_block()))
    # A few real flows forwarded and SNATed by fw1, running through the whole test.
    server = lab.spawn("server", [sys.executable, "-m", "agent.labstreams", "echo", str(PORT)],
                       stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    client = lab.spawn("client", [sys.executable, "-m", "agent.labstreams", "streams", SERVER_INT, str(PORT),
                                  str(STREAMS), "600", "0.05"], stdout=subprocess.PIPE, text=True)
    assert client.stdout.readline().strip() == "ready"
    write_entries(lab, 1, build_writer(lab), ENTRIES)
    filter = sync_filter(lab, 1)
    real = STREAMS + 1  # the TCP streams and the UDP flow beside them
    wait(lambda: synced_count(lab, 1, filter) >= ENTRIES + real, 60, "fw1's table to hold the flows",
         lambda: report(lab, filter))

    # fw2 starts after the entries exist: only a full table can have brought them.
    start(lab, 2, "BACKUP", lab.write_config(2, block=BLOCK, advert_interval=ADVERT, conntrack="cache",
                                            extra=lab.inside_block()))
    # Exactly what fw1's agent would send: events of the join's dump wait behind its barrier.
    wait(converged(lab, filter, ENTRIES + real), 120, "fw2's cache to hold fw1's table",
         lambda: report(lab, filter))
    stats = conntrack_stats(lab, 2)
    assert stats["counters"].get("resyncs_received", 0) >= 1, stats
    assert stats["peers"][NODES[1].hb1]["drops"] == {}, stats

    # conntrackd -f, then -n: the emptied cache is refilled from the peer's table.
    flushed = agentctl(lab, 2, "conntrack", "flush")
    assert flushed["ok"] and int(flushed["message"].split()[1]) >= ENTRIES + real, flushed
    assert (cached(lab, 2) or 0) < ENTRIES, "the flush left the cache full"
    resyncs = stats["counters"]["resyncs_received"]
    asked = agentctl(lab, 2, "conntrack", "resync")
    assert asked["ok"], asked
    wait(converged(lab, filter, ENTRIES + real), 120, "the resync to refill fw2's cache",
         lambda: report(lab, filter))
    assert conntrack_stats(lab, 2)["counters"]["resyncs_received"] > resyncs
    # The flows went on through fw1 all along, and nobody changed roles.
    assert client.poll() is None
    assert lab.state(1) == "MASTER" and lab.state(2) == "BACKUP"
    assert ("BACKUP", "MASTER") not in transitions(lab, 2)


def test_an_event_storm_that_overflows_the_socket_ends_in_an_exact_cache(lab: Lab) -> None:
    # A namespace's nf_conntrack_max is the host's on this kernel (it cannot be raised inside).
    limit = min(table_limit(lab, node, STORM + HEADROOM) for node in (1, 2))
    if limit < STORM + HEADROOM:
        pytest.skip(f"nf_conntrack_max is {limit}, under the {STORM + HEADROOM} a storm needs")
    writer = build_writer(lab)
    start(lab, 1, "MASTER", lab.write_config(1, advert_interval=ADVERT, extra=conntrack_config(
        NODES[2].hb1, extra=f"event_buffer = {SMALL_EVENT_BUFFER}\n")))
    start(lab, 2, "BACKUP", lab.write_config(2, advert_interval=ADVERT, conntrack="cache"))
    filter = sync_filter(lab, 1)
    # The pair is in sync before the storm: fw2's cache is fw1's (few) flows.
    wait(lambda: conntrack_stats(lab, 2).get("in_sync") and converged(lab, filter, 0)(), 60,
         "the pair to be in sync", lambda: report(lab, filter))
    resyncs = conntrack_stats(lab, 2)["counters"].get("resyncs_received", 0)

    # A storm in two halves, each made at once by two writers side by side. The first comes
    # while fw1's agent is stopped, as a loaded host deschedules it, so that its event buffer
    # overflows whatever the machine's speed (unpaused, the agent often keeps up); the second
    # right after, while the agent reads what is left and dumps its table for the overrun.
    agent = lab.agents[1].pid
    os.kill(agent, signal.SIGSTOP)
    try:
        create_at_once(lab, writer, STORM // 2, offset=0)
    finally:
        os.kill(agent, signal.SIGCONT)
    create_at_once(lab, writer, STORM // 2, offset=STORM // 2)
    wait(lambda: conntrack_stats(lab, 1).get("counters", {}).get("overruns", 0) >= 1, 30,
         "fw1 to count the overrun of its event socket", lambda: report(lab, filter))
    assert kernel_count(lab, 1) >= STORM

    # The overrun's full table, and every event after it, leave fw2 with exactly fw1's table.
    wait(converged(lab, filter, STORM), 45, "fw2's cache to equal fw1's table after the storm",
         lambda: report(lab, filter))
    assert conntrack_stats(lab, 2)["counters"].get("resyncs_received", 0) > resyncs
    assert conntrack_stats(lab, 1)["counters"].get("resyncs_sent", 0) >= 2  # the join's and the overrun's
    assert lab.state(1) == "MASTER" and lab.state(2) == "BACKUP"
    assert ("BACKUP", "MASTER") not in transitions(lab, 2)
