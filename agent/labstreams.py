"""Long-lived flows through the cluster: what a failover must not break when connection state is synced.

Run as `python -m agent.labstreams VERB ...`:

- in the server's namespace, `echo PORT`: every byte of every TCP connection and
  every UDP datagram comes back (prints "ready" once listening, IPv4 and IPv6);
- in the client's, `streams SERVER PORT COUNT SECONDS INTERVAL`: COUNT TCP
  connections and one UDP flow, each sending a numbered 8-byte record every
  INTERVAL and checking that the echo is exactly the stream sent, in order. It prints
  "ready" once connected and "flowing" once every TCP flow has had FLOWING records
  echoed, so that a test fails a node over only while traffic really runs through it.
  Ends after SECONDS (or at SIGTERM) and prints one JSON document: per flow the
  bytes echoed, resets and errors, corrupt bytes, and the longest gap between
  two echoes (the outage the flow lived through).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import selectors
import signal
import socket
import struct
import sys
import threading
import time

RECORD = struct.Struct(">Q")
# Records every TCP flow has had echoed before the streams say they are flowing.
FLOWING = 50


def _echo_tcp(conn: socket.socket) -> None:
    # A client that gives up resets its connections: that ends this one, nothing more.
    with conn, contextlib.suppress(OSError):
        while data := conn.recv(65536):
            conn.sendall(data)


def echo(port: int) -> None:
    listeners = []
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        tcp.bind((address, port))
        tcp.listen(256)
        udp = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        udp.bind((address, port))
        listeners += [tcp, udp]
    print("ready", flush=True)
    selector = selectors.DefaultSelector()
    for sock in listeners:
        selector.register(sock, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            if sock.type == socket.SOCK_STREAM:
                conn, _ = sock.accept()
                threading.Thread(target=_echo_tcp, args=(conn,), daemon=True).start()
            else:
                data, peer = sock.recvfrom(65536)
                sock.sendto(data, peer)


class Flow:
    def __init__(self, name: str, sock: socket.socket, started: float) -> None:
        self.name = name
        self.sock = sock
        self.sent = 0
        self.echoed = 0
        self.corrupt = 0
        self.errors: list[str] = []
        self.last_echo = started
        self.max_gap = 0.0
        self.pending = b""
        self.unsent = bytearray()

    def send(self) -> None:
        """One more record, behind what the socket has not taken yet (a partial write keeps
        its tail here), while less than a few records wait. A datagram is one record, or none."""
        if self.sock.type == socket.SOCK_DGRAM:
            try:
                self.sock.send(RECORD.pack(self.sent))
            except BlockingIOError:
                return
            except OSError as exc:
                self.fail(exc)
                return
            self.sent += 1
            return
        if len(self.unsent) < 64 * RECORD.size:
            self.unsent += RECORD.pack(self.sent)
            self.sent += 1
        self.flush()

    def flush(self) -> None:
        if not self.unsent or self.errors:
            return
        try:
            taken = self.sock.send(self.unsent)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(exc)
            return
        del self.unsent[:taken]

    def fail(self, exc: OSError) -> None:
        self.errors.append(f"{type(exc).__name__}: {exc.strerror or exc}")

    def received(self, data: bytes, now: float) -> None:
        if not data:
            self.errors.append("closed by the peer")
            return
        self.max_gap = max(self.max_gap, now - self.last_echo)
        self.last_echo = now
        data = self.pending + data
        whole = len(data) - len(data) % RECORD.size
        for offset in range(0, whole, RECORD.size):
            (number,) = RECORD.unpack_from(data, offset)
            if number != self.echoed:
                self.corrupt += RECORD.size
            self.echoed += 1
        self.pending = data[whole:]

    def report(self, now: float) -> dict:
        return {"sent": self.sent, "echoed": self.echoed, "corrupt_bytes": self.corrupt, "errors": self.errors,
                "unsent_bytes": len(self.unsent), "partial_bytes": len(self.pending),
                "max_gap_s": round(max(self.max_gap, now - self.last_echo), 4)}


def streams(server: str, port: int, count: int, seconds: float, interval: float) -> dict:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    started = time.monotonic()
    flows = []
    for i in range(count):
        sock = socket.create_connection((server, port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        flows.append(Flow(f"tcp{i}", sock, started))
    udp = socket.socket(family, socket.SOCK_DGRAM)
    udp.connect((server, port))
    udp.setblocking(False)
    flows.append(Flow("udp", udp, started))
    selector = selectors.DefaultSelector()
    for flow in flows:
        selector.register(flow.sock, selectors.EVENT_READ, flow)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    started = time.monotonic()
    for flow in flows:
        flow.last_echo = started
    next_send = started
    end = started + seconds
    flowing = False
    while not stop.is_set() and time.monotonic() < end:
        if not flowing and all(f.echoed >= FLOWING for f in flows if f.name != "udp"):
            flowing = True
            print("flowing", flush=True)
        now = time.monotonic()
        if now >= next_send:
            for flow in flows:
                if not flow.errors:
                    flow.send()
            next_send += interval
        for key, _ in selector.select(max(0.0, next_send - time.monotonic())):
            flow = key.data
            try:
                data = flow.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                flow.fail(exc)
                selector.unregister(flow.sock)
                continue
            if flow.name == "udp":
                # Datagrams may be lost or reordered: count them, check each one's content only.
                flow.max_gap = max(flow.max_gap, time.monotonic() - flow.last_echo)
                flow.last_echo = time.monotonic()
                flow.echoed += 1
                if len(data) != RECORD.size or RECORD.unpack(data)[0] >= flow.sent:
                    flow.corrupt += len(data)
                continue
            flow.received(data, time.monotonic())
            if not data:
                selector.unregister(flow.sock)
    # What is still in flight comes back (a flow that lived through an outage may be in
    # retransmission back-off for seconds), or the flow is short by it.
    drain = time.monotonic() + 15.0
    while time.monotonic() < drain and any(f.echoed < f.sent for f in flows if f.name != "udp" and not f.errors):
        for flow in flows:
            flow.flush()
        for key, _ in selector.select(0.05):
            flow = key.data
            try:
                data = flow.sock.recv(65536)
            except OSError:
                continue
            if flow.name != "udp":
                flow.received(data, time.monotonic())
                if not data:
                    selector.unregister(flow.sock)
    now = time.monotonic()
    return {flow.name: flow.report(now) for flow in flows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent.labstreams")
    verbs = parser.add_subparsers(dest="verb", required=True)
    e = verbs.add_parser("echo")
    e.add_argument("port", type=int)
    s = verbs.add_parser("streams")
    s.add_argument("server")
    s.add_argument("port", type=int)
    s.add_argument("count", type=int)
    s.add_argument("seconds", type=float)
    s.add_argument("interval", type=float)
    args = parser.parse_args(argv)
    if args.verb == "echo":
        echo(args.port)
        return 0
    print(json.dumps(streams(args.server, args.port, args.count, args.seconds, args.interval)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
