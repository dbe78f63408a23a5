"""Many client sources, one block address: the lab's flows for active/active tests and benchmarks.

Run in the client namespace as `python -m agent.labflows VERB ...`; prints one
JSON document. An active/active block splits its flows by the source's bucket,
so these send from many source addresses (the lab adds them to the client):

- `connect VIP PORT SOURCE...`: one TCP connection from each source; who answered
  (the lab's servers send their node's name), or "" where nobody did;
- `ping VIP SECONDS INTERVAL SOURCE...`: an echo request from every source every
  INTERVAL; every reply with the MAC of the node that sent it (from an AF_PACKET
  socket) and when it arrived (wall clock, comparable with the agents' step
  times), so that a request answered twice, or a source's outage, shows;
- `load VIP PORT SECONDS SOURCE...`: TCP requests, one after another, round the
  sources, for SECONDS; how many each node answered.

and, in a node's namespace, the servers they talk to (each prints "ready" once
listening, IPv4 and IPv6):

- `serve NAME PORT`: every connection gets NAME, then is closed;
- `echo NAME PORT`: every line comes back prefixed with NAME.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import threading
import time

from agent.core.frames import checksum

IDENT = 0x4441


def connect(vip: str, port: int, sources: list[str], timeout: float = 2.0) -> dict[str, str]:
    out = {}
    for src in sources:
        try:
            with socket.create_connection((vip, port), timeout=timeout, source_address=(src, 0)) as s:
                out[src] = s.recv(16).decode()
        except OSError:
            out[src] = ""
    return out


def _echo(seq: int) -> bytes:
    head = struct.pack("!BBHHH", 8, 0, 0, IDENT, seq & 0xFFFF)
    return struct.pack("!BBHHH", 8, 0, checksum(head), IDENT, seq & 0xFFFF)


def ping(vip: str, seconds: float, interval: float, sources: list[str], ready=None) -> dict:
    senders = []
    for src in sources:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        s.bind((src, 0))
        senders.append(s)
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    rx.bind(("ext0", 0))
    replies, sent, seq = [], 0, 0
    end = due = time.monotonic()
    end += seconds
    if ready is not None:
        ready()
    while time.monotonic() < end:
        if time.monotonic() >= due:
            seq += 1
            for s in senders:
                s.sendto(_echo(seq), (vip, 0))
                sent += 1
            due += interval
        while select.select([rx], [], [], 0)[0]:
            frame = rx.recv(2048)
            ihl = (frame[14] & 15) * 4
            icmp = frame[14 + ihl:]
            if frame[23] == socket.IPPROTO_ICMP and icmp[:1] == b"\0" and struct.unpack("!H", icmp[4:6])[0] == IDENT:
                replies.append([socket.inet_ntoa(frame[30:34]), struct.unpack("!H", icmp[6:8])[0],
                                frame[6:12].hex(":"), time.time()])
        time.sleep(0.0005)
    return {"sent": sent, "rounds": seq, "replies": replies}


def load(vip: str, port: int, seconds: float, sources: list[str]) -> dict:
    answered: dict[str, int] = {}
    failed, i = 0, 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        src = sources[i % len(sources)]
        i += 1
        try:
            with socket.create_connection((vip, port), timeout=1.0, source_address=(src, 0)) as s:
                who = s.recv(16).decode()
            answered[who] = answered.get(who, 0) + 1
        except OSError:
            failed += 1
    return {"seconds": time.monotonic() - started, "answered": answered, "failed": failed}


def _listen(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(512)
    print("ready", flush=True)
    return s


def serve(name: str, port: int) -> None:
    listener = _listen(port)
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(name.encode())


def echo(name: str, port: int) -> None:
    listener = _listen(port)

    def lines(conn: socket.socket) -> None:
        with conn:
            for line in conn.makefile():
                conn.sendall(f"{name} {line}".encode())

    while True:
        threading.Thread(target=lines, args=(listener.accept()[0],), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    c = verbs.add_parser("connect")
    c.add_argument("vip")
    c.add_argument("port", type=int)
    c.add_argument("sources", nargs="+")
    p = verbs.add_parser("ping")
    p.add_argument("vip")
    p.add_argument("seconds", type=float)
    p.add_argument("interval", type=float)
    p.add_argument("sources", nargs="+")
    ld = verbs.add_parser("load")
    ld.add_argument("vip")
    ld.add_argument("port", type=int)
    ld.add_argument("seconds", type=float)
    ld.add_argument("sources", nargs="+")
    for verb in ("serve", "echo"):
        server = verbs.add_parser(verb)
        server.add_argument("name")
        server.add_argument("port", type=int)
    args = parser.parse_args(argv)
    if args.verb in ("serve", "echo"):
        (serve if args.verb == "serve" else echo)(args.name, args.port)
        return 0
    if args.verb == "connect":
        out = connect(args.vip, args.port, args.sources)
    elif args.verb == "ping":
        out = ping(args.vip, args.seconds, args.interval, args.sources, ready=lambda: print("ready", flush=True))
    else:
        out = load(args.vip, args.port, args.seconds, args.sources)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
