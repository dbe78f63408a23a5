"""agentctl: inspect and steer a running dpagent through its control socket.

Exit codes, as birdc users expect them to mean something: 0 done, 1 the agent
refused the request, 3 the agent could not be reached.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Callable
from typing import TextIO

from agent import manual

DEFAULT_SOCKET = "/run/dpagent/control.sock"
EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3


def request(path: str, command: str, args: dict | None = None, timeout: float = 5.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps({"command": command, "args": args or {}}).encode() + b"\n")
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _bird_lines(routes: dict) -> list[str]:
    """BIRD as the last check found it, and the companion routes each block has announced."""
    found = routes.get("bird")
    if not found:
        return []
    state = f"BIRD {found['version']}" if found["running"] else "BIRD NOT RUNNING"
    protocols = ", ".join(f"{name} {p['state']}" + (f" ({p['imported']} routes)" if p.get("imported") is not None
                                                    else "") for name, p in found["protocols"].items())
    lines = [f"bgp: {state} at {found['socket']}" + (f": {protocols}" if protocols else "")]
    if found["problem"]:
        lines.append(f"  WARNING: {found['problem']}")
    announced = routes.get("announced", {})
    if announced:
        lines.append(f"  table {routes['table']}: " + ", ".join(f"{n} {c} route(s)" for n, c in announced.items()))
    return lines


def render_status(status: dict) -> str:
    node = status["node"]
    lines = [
        f"node {node['node_id']}  state {node['state']['name']} ({node['state']['number']})"
        f"  priority {node['priority']}  master {node.get('master') or '-'}",
    ]
    if node.get("last_transition"):
        lines.append(f"  last transition: {node['last_transition']['reason']}")
    lines.append("peers:")
    for peer in node.get("peers", []):
        if peer.get("alive", True):
            state = f"{peer['state']:<12}"
        else:
            state = f"DEAD for {_age(peer.get('dead_for_s'))} (last said {peer['state']})"
        loss = peer.get("loss")
        lines.append(
            f"  node {peer['node_id']:<6} {state}"
            f" prio {peer['priority']:<4} last frame {_age(peer.get('age_s'))} ago"
            f" via {','.join(peer.get('links', [])) or '-'}"
            + (f"  loss {loss:.1%}, dead after {_age(peer.get('dead_interval_s'))}" if loss is not None else "")
        )
    lines.append("heartbeat links:")
    for link in status.get("links", []):
        lines.append(
            f"  {link['name']:<12} {'open' if link['up'] else 'CLOSED':<7} link {link.get('kernel', '-'):<22}"
            f" send errors {link['send_errors']}"
            + (f"  ({link['last_error']})" if link.get("last_error") else "")
        )
    lines.append("blocks:")
    xdp = status.get("xdp", {}).get("blocks", {})
    for block in status.get("blocks", []):
        l2 = block.get("l2") or {}
        backend = l2.get("backend")
        if backend == "xdp":
            backend = f"xdp {xdp.get(block['name'], {}).get('attach_mode') or 'NOT ATTACHED'}"
        lines.append(
            f"  {block['name']:<12} {block['interface']:<10} {block['addresses']} addresses"
            f"  {'HELD' if block['held'] else 'not held'}"
            + (f"  l2 {l2['mode']}" + (f" {l2['mac']}" if l2.get("mac") else "") if l2 else "")
            + (f"  filter {backend}" if backend else "")
            + (f"  via {block['via']}" if block.get("via", "l2") != "l2" else "")
        )
    lines += _bird_lines(status.get("routes", {}))
    announce = status.get("announce", {})
    if announce:
        lines.append(
            f"announce: frames sent {announce.get('frames_sent', 0)}, send errors {announce.get('send_errors', 0)},"
            f" last round {_age(announce.get('last_duration_s'))}"
        )
    drops = {k: v for k, v in node.get("drops", {}).items() if v}
    lines.append("drops: " + (", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"))
    lines.append("recent transitions:")
    for item in status.get("transitions", [])[-8:]:
        when = time.strftime("%H:%M:%S", time.localtime(item["at"])) + f".{int(item['at'] * 1000) % 1000:03d}"
        gap = item.get("max_advert_gap_s")
        lines.append(f"  {when} {item['old']} -> {item['new']}: {item['reason']}"
                     + (f"  (worst advert gap {gap * 1000:.1f} ms)" if gap else ""))
        for step in item["steps"]:
            mark = "  running" if not step.get("done", True) else "" if step["ok"] else "  FAILED"
            lines.append(f"      {step['name']:<12} {step['seconds'] * 1000:9.3f} ms{mark}")
    return "\n".join(lines)


def _runs(owners: list[list[int]]) -> list[tuple[int, int, list[int]]]:
    """Consecutive buckets with the same owners, as (first, last, owners)."""
    runs: list[tuple[int, int, list[int]]] = []
    for b, held in enumerate(owners):
        if runs and runs[-1][2] == held and runs[-1][1] == b - 1:
            runs[-1] = (runs[-1][0], b, held)
        else:
            runs.append((b, b, held))
    return runs


def shared_blocks(status: dict, name: str | None) -> dict[str, dict]:
    """The active/active blocks of the status document (the one named, if any); ValueError
    if there is none such."""
    blocks = status["node"].get("shared", {}).get("blocks", {})
    if name is not None:
        if name not in blocks:
            raise ValueError(f"no active/active block {name!r} (there are: {', '.join(sorted(blocks)) or 'none'})")
        return {name: blocks[name]}
    if not blocks:
        raise ValueError("no active/active block is configured")
    return blocks


def bucket_table(status: dict, name: str | None) -> dict[str, list[dict]]:
    """Per block, runs of buckets with their owner, its generation and the age of its view."""
    node = status["node"]
    ages = {p["node_id"]: p["age_s"] for p in node.get("peers", [])}
    out = {}
    for block, info in shared_blocks(status, name).items():
        generations = {int(p): v["generation"] for p, v in info["peers"].items()} | {node["node_id"]: info["generation"]}
        out[block] = [{"first": first, "last": last, "owners": held,
                       "generations": [generations.get(n) for n in held],
                       "view_age_s": [0.0 if n == node["node_id"] else ages.get(n) for n in held]}
                      for first, last, held in _runs(info["owners"])]
    return out


def render_buckets(table: dict[str, list[dict]]) -> str:
    lines = []
    for block, runs in table.items():
        lines.append(f"block {block}:")
        for run in runs:
            span = f"{run['first']}" if run["first"] == run["last"] else f"{run['first']}-{run['last']}"
            owners = ", ".join(f"node {n} (generation {g}, view {_age(a)} old)"
                               for n, g, a in zip(run["owners"], run["generations"], run["view_age_s"]))
            lines.append(f"  {span:<9} {owners or 'nobody (moving)'}")
    return "\n".join(lines)


def flow_owner(status: dict, address: str, ports: list[int], name: str | None) -> dict:
    """Which bucket a TCP flow from `address` (its source, then destination port) falls in,
    and who owns it, computed as the kernel does (agent.core.buckets)."""
    from ipaddress import ip_address

    from agent.core.buckets import HashFields, bucket, flow_fields

    blocks = shared_blocks(status, name)
    if len(blocks) > 1:
        raise ValueError(f"several active/active blocks ({', '.join(sorted(blocks))}): name one with --block")
    (block, info), = blocks.items()
    l2 = next(b["l2"] for b in status["blocks"] if b["name"] == block)
    fields = flow_fields(HashFields(l2["hash"]), 6, fragment=False)
    needed = {HashFields.SOURCE: 0, HashFields.SOURCE_PORT: 1, HashFields.SOURCE_PORTS: 2}[fields]
    if len(ports) < needed:
        raise ValueError(f"block {block} hashes {fields.value}: give {needed} port(s)")
    sport, dport = (ports + [None, None])[:2]
    number = bucket(fields, ip_address(address), sport, dport, l2["buckets"], l2["hash_seed"])
    return {"block": block, "address": address, "ports": ports[:needed], "hash": fields.value, "bucket": number,
            "owners": info["owners"][number]}


CONNTRACK_ACTIONS = {
    "stats": "cache size, events/s, sync lag and health per peer, resyncs, the last replay (conntrackd -s)",
    "commit": "write the cache into the kernel now (conntrackd -c)",
    "flush": "empty the cache (conntrackd -f)",
    "resync": "ask every peer for its full table (conntrackd -n)",
    "bulk-send": "send our full table to every peer (conntrackd -B)",
}


def render_conntrack(stats: dict) -> str:
    kernel = stats.get("kernel", {})
    replay = stats.get("last_replay") or {}
    lines = [
        f"mode {stats['mode']}  socket {'open' if stats['open'] else 'CLOSED'}"
        f"  {'sending (holds a block)' if stats['holding'] else 'not sending (holds no block)'}"
        f"  {'in sync' if stats['in_sync'] else 'OUT OF SYNC'}",
        f"kernel: {kernel.get('count')} entries, max {kernel.get('max')}, {kernel.get('buckets')} buckets",
        f"events: {stats['events_per_s']}/s, {stats['counters'].get('events', 0)} in all,"
        f" overruns {stats['counters'].get('overruns', 0)}",
    ]
    if stats.get("cache_entries") is not None:
        lines.append(f"cache: {stats['cache_entries']} entries, {stats['cache_bytes']} bytes")
    if replay:
        lines.append(f"last replay: {replay.get('applied')} entries in {replay.get('seconds', 0) * 1000:.1f} ms,"
                     f" errors {replay.get('errors') or 'none'}")
    for peer, info in stats.get("peers", {}).items():
        lines.append(f"peer {peer}: " + ", ".join(f"{k} {v}" for k, v in sorted(info.items())
                                                   if not isinstance(v, dict)))
    drops = {k: v for k, v in stats.get("drops", {}).items() if v}
    lines.append("drops: " + (", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"))
    lines += [f"WARNING: {w}" for w in stats.get("warnings", [])]
    return "\n".join(lines)


def ask(path: str, command: str, payload: dict | None = None) -> dict | int:
    """The agent's answer, or the exit status to end with (the reason printed)."""
    try:
        reply = request(path, command, payload)
    except (OSError, ValueError) as exc:
        print(f"agentctl: cannot reach dpagent at {path}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not reply.get("ok"):
        print(f"agentctl: {command}: {reply.get('error', 'refused')}", file=sys.stderr)
        return EXIT_REFUSED
    return reply


def positive_seconds(text: str) -> float:
    value = float(text)
    if not 0.01 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text}: give seconds from 0.01 to 3600")
    return value


# Cursor home, then each line cleared to its end and the rest of the screen below: a redraw in place
# that never blanks the screen between two frames, as watch(1) does it.
HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


def watch(path: str, interval: float, *, as_json: bool = False, pretty: bool = False,
          out: TextIO | None = None, render: Callable[[dict], str] = render_status) -> int:
    """`agentctl status --watch`: the status every `interval` seconds until Ctrl-C (0), or until
    the agent cannot be reached (EXIT_UNREACHABLE) or refuses (EXIT_REFUSED). On a terminal each
    table is drawn over the last; otherwise (and with JSON) the frames follow one another."""
    out = out or sys.stdout
    in_place = out.isatty() and not as_json
    try:
        while True:
            reply = ask(path, "status")
            if isinstance(reply, int):
                return reply
            if as_json:
                out.write(json.dumps(reply, indent=2 if pretty else None, sort_keys=True) + "\n")
            else:
                header = f"every {interval:g} s: agentctl status   {time.strftime('%H:%M:%S')}   (Ctrl-C ends)"
                text = f"{header}\n\n{render(reply)}\n"
                out.write(HOME + text.replace("\n", CLEAR_LINE + "\n") + CLEAR_BELOW if in_place else text + "\n")
            out.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def build_parser() -> argparse.ArgumentParser:
    """agentctl's command line, with agent.manual's text: what `--help` and the man page show."""
    parser = argparse.ArgumentParser(prog="agentctl", description=__doc__.splitlines()[0])
    parser.add_argument("-s", "--socket", default=DEFAULT_SOCKET, help="control socket path")
    parser.add_argument("-j", "--json", action="store_true", help="compact JSON output")
    parser.add_argument("-p", "--pretty", action="store_true", help="pretty JSON output")
    verbs = parser.add_subparsers(dest="verb", required=True)
    status = verbs.add_parser("status", help="state, peers, blocks, transitions, counters")
    status.add_argument("-w", "--watch", action="store_true", help="redraw in place every --interval seconds "
                        "until Ctrl-C (exit 0); with -j one JSON document per line")
    status.add_argument("-i", "--interval", type=positive_seconds, default=1.0, metavar="SECONDS",
                        help="seconds between two refreshes of --watch (default 1)")
    failover = verbs.add_parser("failover", help="hand the blocks over to a live backup gracefully")
    failover.add_argument("--force", action="store_true", help="resign even if no live backup is heard")
    maintenance = verbs.add_parser("maintenance", help="leave the election (on) or rejoin it (off)")
    maintenance.add_argument("mode", choices=["on", "off"])
    verbs.add_parser("metrics", help="Prometheus text exposition")
    verbs.add_parser("reload", help="re-read the configuration (like SIGHUP)")
    buckets = verbs.add_parser("buckets", help="owner, generation and view age of each active/active bucket")
    buckets.add_argument("block", nargs="?", help="one active/active block (default: all)")
    owner = verbs.add_parser("owner", help="the bucket of a TCP flow from ADDRESS and the node that owns it")
    owner.add_argument("address", help="the outside peer's address (the source of what arrives)")
    owner.add_argument("ports", nargs="*", type=int, help="its source port, then the destination port")
    owner.add_argument("--block", help="the active/active block, if there are several")
    conntrack = verbs.add_parser("conntrack", help="connection-tracking sync, with conntrackd's verbs")
    conntrack.add_argument("action", choices=CONNTRACK_ACTIONS, help="; ".join(
        f"{name}: {what}" for name, what in CONNTRACK_ACTIONS.items()))
    return manual.apply(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    command, payload = args.verb, {}
    if command in ("buckets", "owner"):
        command = "status"
    if args.verb == "status" and args.watch:
        return watch(args.socket, args.interval, as_json=args.json or args.pretty, pretty=args.pretty)
    if args.verb == "maintenance":
        payload = {"mode": args.mode}
    elif args.verb == "failover" and args.force:
        payload = {"force": True}
    elif args.verb == "conntrack":
        payload = {"action": args.action}
    reply = ask(args.socket, command, payload)
    if isinstance(reply, int):
        return reply
    if args.verb in ("buckets", "owner"):
        try:
            shown = bucket_table(reply, args.block) if args.verb == "buckets" else flow_owner(
                reply, args.address, args.ports, args.block)
        except ValueError as exc:
            print(f"agentctl: {args.verb}: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        if args.json or args.pretty:
            print(json.dumps(shown, indent=2 if args.pretty else None, sort_keys=True))
        elif args.verb == "buckets":
            print(render_buckets(shown))
        else:
            print(f"{shown['address']} {' '.join(map(str, shown['ports']))}".strip()
                  + f" -> block {shown['block']} bucket {shown['bucket']} ({shown['hash']}): "
                  + (", ".join(f"node {n}" for n in shown["owners"]) or "nobody (moving)"))
        return 0
    if args.json or args.pretty:
        print(json.dumps(reply, indent=2 if args.pretty else None, sort_keys=True))
    elif command == "status":
        print(render_status(reply))
    elif command == "metrics":
        print(reply["text"], end="")
    elif command == "conntrack" and args.action == "stats":
        print(render_conntrack(reply))
    else:
        print(reply.get("message", "ok"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
