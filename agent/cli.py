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
        )
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentctl", description=__doc__.splitlines()[0])
    parser.add_argument("-s", "--socket", default=DEFAULT_SOCKET, help="control socket path")
    parser.add_argument("-j", "--json", action="store_true", help="compact JSON output")
    parser.add_argument("-p", "--pretty", action="store_true", help="pretty JSON output")
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("status", help="state, peers, blocks, transitions, counters")
    failover = verbs.add_parser("failover", help="hand the blocks over to a live backup gracefully")
    failover.add_argument("--force", action="store_true", help="resign even if no live backup is heard")
    maintenance = verbs.add_parser("maintenance", help="leave the election (on) or rejoin it (off)")
    maintenance.add_argument("mode", choices=["on", "off"])
    verbs.add_parser("metrics", help="Prometheus text exposition")
    verbs.add_parser("reload", help="re-read the configuration (like SIGHUP)")
    args = parser.parse_args(argv)

    command, payload = args.verb, {}
    if args.verb == "maintenance":
        payload = {"mode": args.mode}
    elif args.verb == "failover" and args.force:
        payload = {"force": True}
    try:
        reply = request(args.socket, command, payload)
    except (OSError, ValueError) as exc:
        print(f"agentctl: cannot reach dpagent at {args.socket}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not reply.get("ok"):
        print(f"agentctl: {command}: {reply.get('error', 'refused')}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json or args.pretty:
        print(json.dumps(reply, indent=2 if args.pretty else None, sort_keys=True))
    elif command == "status":
        print(render_status(reply))
    elif command == "metrics":
        print(reply["text"], end="")
    else:
        print(reply.get("message", "ok"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
