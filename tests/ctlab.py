"""What the conntrack netns tests share: the agent's conntrack stats, synthetic entries in a
node's kernel table (bench/ct_writer.c), and the master's table as the sync should see it.

`synced_count(lab, node)` is the yardstick of every convergence check: the entries of a
node's kernel table that its agent's filter keeps (the default protocols, its own link
addresses ignored, exactly what ConntrackSync.start() builds), counted from a dump taken
in that node's namespace. A peer's cache is complete when it holds that many.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from agent.cli import request
from agent.config.build import PROTOCOL_NUMBERS
from agent.dataplane import conntrack as ct
from agent.lab import Lab
from agent.netns import enter
from agent.runtime.ctsync import own_addresses

WRITER_SOURCE = Path(__file__).resolve().parents[1] / "bench" / "ct_writer.c"
# The lab's sync and heartbeat links: what the agent ignores the flows of (its own addresses there).
LINKS = ("hb1", "hb0", "hb1")
POLL = 0.1


def wait(predicate: Callable[[], object], timeout: float, what: str, detail: Callable[[], str] = lambda: ""):
    """The first true value of predicate(), polled until the deadline; else an AssertionError saying why."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(POLL)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}: {detail()}")


def conntrack_stats(lab: Lab, node: int) -> dict:
    """`agentctl conntrack stats` of fw<node>, {} while it does not answer."""
    try:
        reply = request(lab.socket_path(node), "conntrack", {"action": "stats"}, timeout=10)
    except (OSError, ValueError):
        return {}
    return reply if reply.get("ok") else {}


def cached(lab: Lab, node: int) -> int | None:
    return conntrack_stats(lab, node).get("cache_entries")


def agentctl(lab: Lab, node: int, *argv: str) -> dict:
    """Run agentctl itself (the operator's command) against fw<node>; its JSON answer."""
    done = subprocess.run([sys.executable, "-m", "agent.cli", "-s", lab.socket_path(node), "-j", *argv],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"agentctl {' '.join(argv)}: {done.returncode} {done.stdout} {done.stderr}"
    return json.loads(done.stdout)


def conntrack_config(peer: str, mode: str = "cache", extra: str = "") -> str:
    """A [conntrack] table written out (the lab's, over hb1), with more keys in `extra`."""
    return f'[conntrack]\ninterface = "hb1"\npeers = ["{peer}"]\nmode = "{mode}"\n{extra}'


def build_writer(lab: Lab) -> Path:
    """bench/ct_writer.c compiled into the lab's directory (removed with the lab)."""
    binary = lab.dir / "ct_writer"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(binary), str(WRITER_SOURCE)], check=True,
                   capture_output=True, timeout=120)
    return binary


def write_entries(lab: Lab, node: int, writer: Path, count: int, offset: int = 0) -> dict:
    """`count` TCP ESTABLISHED entries (198.18.0.0 + i / 32768 : 32768 + i % 32768 to 198.19.0.1:443,
    i from `offset`), created at once in fw<node>'s table, an hour to live; the writer's report."""
    done = lab.exec(f"fw{node}", [str(writer), str(count), str(offset), "1024", "3600"])
    report = json.loads(done.stdout)
    assert report["applied"] == count and not report["errors"], report
    return report


def table_limit(lab: Lab, node: int, needed: int) -> int:
    """fw<node>'s nf_conntrack_max, raised to `needed` if it is lower and the kernel lets a
    namespace set it (on this kernel it may not exceed the host's); what it is now."""
    path = "/proc/sys/net/netfilter/nf_conntrack_max"
    current = int(lab.exec(f"fw{node}", ["cat", path]).stdout)
    if current < needed:
        lab.exec(f"fw{node}", ["sysctl", "-q", "-w", f"net.netfilter.nf_conntrack_max={needed}"], check=False)
        current = int(lab.exec(f"fw{node}", ["cat", path]).stdout)
    return current


def kernel_count(lab: Lab, node: int) -> int:
    """`conntrack -C` in fw<node>: every entry of its table."""
    return int(lab.exec(f"fw{node}", ["conntrack", "-C"]).stdout)


def sync_filter(lab: Lab, node: int) -> ct.Filter:
    """The filter fw<node>'s agent syncs through (no [conntrack] ignore or protocols keys given)."""
    with enter(lab.ns(f"fw{node}")):
        ignore = own_addresses(LINKS)
    # And the sync peers' addresses (the lab's [conntrack] peers are the others' hb1).
    peers = tuple(a.hb1 for n, a in lab.addresses.items() if n != node)
    return ct.Filter(frozenset(PROTOCOL_NUMBERS.values()), ignore + peers)


def synced_count(lab: Lab, node: int, filter: ct.Filter) -> int:
    """The entries of fw<node>'s table that its agent sends its peers (a dump, filtered as it filters)."""
    with enter(lab.ns(f"fw{node}")):
        return ct.records_count(ct.dump_table(filter=filter))


def transitions(lab: Lab, node: int) -> list[tuple[str, str]]:
    status = lab.status(node, timeout=10) or {}
    return [(t["old"], t["new"]) for t in status.get("transitions", [])]


def logs(lab: Lab, *nodes: int) -> str:
    return "".join(f"\n--- fw{n}.log ---\n" + (lab.dir / f"fw{n}.log").read_text()[-2000:] for n in nodes)
