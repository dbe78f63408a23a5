"""The manual of dpagent and agentctl: one text for `--help` and for the man pages.

Each command and verb has a Page: what it does or shows, its exit statuses and
examples. `apply` puts the pages into an argparse parser (description and
epilog of it and of each verb), and agent.manpage writes the same pages, with
the parser's own options, as roff. So a sentence is written once and `agentctl
status --help` says what `man agentctl` says.
"""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass

WIDTH = 78


@dataclass(frozen=True)
class Page:
    """`description`: paragraphs, each one unwrapped string; `exit_status` and
    `examples`: (status or command line, what it means); `summary`: a command's
    line in the man page's NAME section."""

    description: tuple[str, ...]
    summary: str = ""
    exit_status: tuple[tuple[int, str], ...] = ()
    examples: tuple[tuple[str, str], ...] = ()


AGENTCTL_EXIT = (
    (0, "done: the agent answered and did what was asked"),
    (1, "refused: the agent answered with an error (its reason is printed), or the verb's own check failed"),
    (3, "unreachable: no agent listens on the control socket, or it did not answer within 5 s"),
)

PAGES: dict[str, Page] = {
    "agentctl": Page(
        summary="inspect and steer a running dpagent",
        description=(
            "agentctl inspects and steers a running dpagent through its control socket "
            "(/run/dpagent/control.sock unless -s says otherwise; mode 0600, so run it as root or as "
            "the dpagent user). Each verb sends one request and prints the answer as a human table, or "
            "as JSON with -j (compact) or -p (pretty), as ip -j and ip -p do.",
            "The verbs are named as conntrackd's and birdc's operators know them. States are numbered as "
            "keepalived numbers them: INIT 0, BACKUP 1, MASTER 2, FAULT 3, plus MAINTENANCE 4.",
        ),
        exit_status=AGENTCTL_EXIT,
        examples=(
            ("agentctl status", "this node's state, peers, links, blocks and recent transitions"),
            ("agentctl status --watch --interval 0.2", "the same, redrawn in place five times a second "
                                                        "during a failover drill; Ctrl-C ends it"),
            ("agentctl -p status", "the whole status document as pretty JSON"),
            ("agentctl failover", "hand the blocks to the best live backup now"),
        ),
    ),
    "agentctl status": Page(
        description=(
            "Shows the node: its id, state (name and keepalived's number), priority and the master it "
            "follows; every peer with the age of its last frame, the links it was heard on, its measured "
            "advert loss and the dead interval used for it (a dead peer as DEAD for how long); the "
            "heartbeat links with their send errors; every block with its interface, address count, "
            "whether this node holds it, its L2 mode and filter; the announcement counters; dropped "
            "frames by reason; and the last eight transitions with the time each takeover step took.",
            "With --watch the table is redrawn in place every --interval seconds (as watch(1) does) until "
            "Ctrl-C, which exits 0. With -j each refresh prints one JSON document on a line of its own "
            "instead (with -p, pretty over several lines). An agent that cannot be reached, at the start "
            "or later, ends the watch with exit status 3.",
        ),
        exit_status=AGENTCTL_EXIT,
        examples=(
            ("agentctl status", "one table"),
            ("agentctl status --watch", "redrawn every second until Ctrl-C"),
            ("agentctl -j status --watch --interval 0.1 | jq -c .node.state",
             "the state, ten times a second, as a stream"),
        ),
    ),
    "agentctl failover": Page(
        description=(
            "Hands the blocks to a live backup gracefully: the master sends a resign frame, the best "
            "backup takes over at once instead of waiting a dead interval, and this node becomes a backup. "
            "Refused (exit 1) when this node is not master, or when no live backup is heard, since the "
            "blocks would then go dark for a dead interval and come back here; --force resigns anyway.",
        ),
        exit_status=AGENTCTL_EXIT,
        examples=(("agentctl failover", "move the blocks to the peer before maintenance on this node"),),
    ),
    "agentctl maintenance": Page(
        description=(
            "on: leave MASTER gracefully (as failover does) and stay out of the election, in state "
            "MAINTENANCE, until off. off: rejoin as a backup; the node takes the blocks back only as its "
            "priority, preempt and preempt_delay say.",
        ),
        exit_status=AGENTCTL_EXIT,
        examples=(("agentctl maintenance on", "before a reboot or an upgrade of this node"),
                  ("agentctl maintenance off", "afterwards")),
    ),
    "agentctl metrics": Page(
        description=(
            "Prints the metrics in the Prometheus text format (prometheus_client), every name prefixed "
            "dpagent_, base units and _total counters, the role numbered as keepalived-exporter numbers it. "
            "The same text is served over HTTP at /metrics when [metrics] listen is configured.",
        ),
        exit_status=AGENTCTL_EXIT,
        examples=(("agentctl metrics | grep ^dpagent_state", "this node's role as a number"),),
    ),
    "agentctl reload": Page(
        description=(
            "Re-reads the configuration, as SIGHUP does, and waits for the result: keys, and blocks added, "
            "changed or removed, take effect in place. An invalid file, or a change to [node], "
            "[[heartbeat]], [control] or [metrics], is refused (exit 1) with the reasons, and the agent "
            "keeps running on its current configuration.",
        ),
        exit_status=AGENTCTL_EXIT,
        examples=(("dpagent check && agentctl reload", "check the edited file first, then apply it"),),
    ),
    "agentctl buckets": Page(
        description=(
            "For active/active blocks: each run of consecutive flow buckets with the same owner, the owner's "
            "generation and the age of its view, as this node last heard them. A run owned by nobody is "
            "moving between nodes (released, not yet claimed).",
        ),
        exit_status=AGENTCTL_EXIT,
        examples=(("agentctl buckets web", "who owns which buckets of block web"),),
    ),
    "agentctl owner": Page(
        description=(
            "Which bucket a TCP flow from ADDRESS (the outside peer: the source of what arrives) falls in, "
            "and which node owns it, computed as the kernel computes it. Give as many ports as the block's "
            "hash covers: none for sourceip, the source port for sourceip-sourceport, then the destination "
            "port for sourceip-sourceport-destport.",
        ),
        exit_status=AGENTCTL_EXIT,
        examples=(("agentctl owner 192.0.2.9 40000 443", "the owner of that flow's bucket"),),
    ),
    "agentctl conntrack": Page(
        description=(
            "The connection-tracking sync, with conntrackd's verbs. stats (conntrackd -s): the mode (cache "
            "or hot standby), whether this node sends its events (only while it holds a block), events per "
            "second, event-socket overruns, the kernel table's size against its limit and hash buckets, "
            "the cache's entries and bytes, the last replay (entries, time, errors), and per peer the "
            "sync's counters, lag and health; OUT OF SYNC names a peer whose copy cannot be trusted, and "
            "WARNING lines say what to size. commit (conntrackd -c) writes the cache into the kernel now; "
            "flush (-f) empties the cache; resync (-n) asks every peer for its full table; bulk-send (-B) "
            "sends ours to every peer. A takeover replays the cache by itself, before the gate opens.",
        ),
        exit_status=AGENTCTL_EXIT,
        examples=(("agentctl conntrack stats", "is the backup's copy complete and current?"),
                  ("agentctl conntrack resync", "refill this node's cache from its peers")),
    ),
    "dpagent": Page(
        summary="high-availability dataplane agent for Linux edges that hold large address blocks",
        description=(
            "dpagent is a high-availability dataplane agent: the nodes of a cluster run an authenticated "
            "heartbeat and a VRRP-like election, and the master holds the configured address blocks (a "
            "/16 as easily as one address) and announces them, or the live nodes share a block by a flow "
            "hash (active/active). It runs under systemd as dpagent.service and is inspected with "
            "agentctl(8).",
            "run (the default) runs the agent on the configuration. check validates the configuration "
            "and prints one line per error with its key path and value; the unit runs it as "
            "ExecStartPre, so an agent never starts on a file that fails it. cleanup removes everything "
            "of dpagent's from the kernel (routes, addresses, nftables tables, XDP programs); the unit "
            "runs it as ExecStopPost, and it refuses while an agent holds the state directory.",
        ),
        exit_status=(
            (0, "run: stopped cleanly; check: the configuration is valid; cleanup: done"),
            (1, "another agent holds the state directory or the control socket (run, cleanup)"),
            (2, "the configuration is invalid: one line per error on standard error"),
            (4, "run: stopped with something of its own still in the kernel (a release that did not "
                "finish), so that systemd's Restart=on-failure and ExecStopPost cleanup run"),
        ),
        examples=(
            ("dpagent check", "validate /etc/dpagent/dpagent.toml"),
            ("dpagent check /tmp/new.toml", "validate another file"),
            ("dpagent -v -c /etc/dpagent/dpagent.toml", "run in the foreground, logging every step"),
            ("systemctl enable --now dpagent", "run it as the package installs it"),
        ),
    ),
}


def _fill(text: str, indent: str = "") -> str:
    return textwrap.fill(text, WIDTH, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False)


def description(page: Page) -> str:
    return "\n\n".join(_fill(p) for p in page.description)


def epilog(page: Page) -> str:
    """Exit statuses and examples as plain text, for the end of `--help`."""
    parts = []
    if page.exit_status:
        parts.append("exit status:\n" + "\n".join(
            textwrap.fill(text, WIDTH, initial_indent=f"  {code}  ", subsequent_indent="     ",
                          break_on_hyphens=False)
            for code, text in page.exit_status))
    if page.examples:
        parts.append("examples:\n" + "\n".join(f"  {command}\n{_fill(text, '      ')}"
                                               for command, text in page.examples))
    return "\n\n".join(parts)


def verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's verbs (sub-commands) by name, in the order they were added."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def apply(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give the parser and each of its verbs that has a page its text; returns the parser."""
    for name, each in {parser.prog: parser, **{f"{parser.prog} {v}": p for v, p in verbs(parser).items()}}.items():
        page = PAGES.get(name)
        if page is None:
            continue
        each.description = description(page)
        each.epilog = epilog(page)
        each.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser
