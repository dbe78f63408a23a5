"""A 1 ms ICMP probe stream across a block, run in the lab's client namespace.

Echo requests go out through a raw ICMP socket (the kernel resolves neighbours as a
real client would); replies are read from an AF_PACKET socket so each one carries
the MAC of the node that answered. That is how a benchmark proves that no two nodes
answered for the block at once, and where the outage of a failover is read from.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass

from agent.core.frames import checksum

ETH_P_IP = 0x0800


def echo_request(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq & 0xFFFF)
    payload = struct.pack("!Q", seq)
    return struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, seq & 0xFFFF) + payload


def spread(block: str, count: int) -> list[str]:
    """`count` addresses evenly spaced over the block, so every part of it is probed."""
    net = ipaddress.ip_network(block)
    step = max(1, net.num_addresses // count)
    return [str(net.network_address + min(i * step + step // 2, net.num_addresses - 1)) for i in range(count)]


def run(targets: list[str], ifname: str, interval: float, duration: float) -> dict:
    ident = os.getpid() & 0xFFFF
    tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    tx.setblocking(False)
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    rx.bind((ifname, ETH_P_IP))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.setblocking(False)
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sent: list[tuple[int, float, int]] = []
    replies: list[tuple[int, float, str]] = []
    send_errors = 0
    start = time.time()
    print("ready", flush=True)
    seq = 0
    next_send = time.monotonic()
    end = next_send + duration
    while not stop and time.monotonic() < end:
        now = time.monotonic()
        if now >= next_send:
            index = seq % len(targets)
            try:
                tx.sendto(echo_request(ident, seq), (targets[index], 0))
            except OSError:
                send_errors += 1
            sent.append((seq, time.time(), index))
            seq += 1
            next_send += interval
            if next_send < now:
                next_send = now + interval
        readable, _, _ = select.select([rx], [], [], max(0.0, next_send - time.monotonic()))
        while readable:
            try:
                frame = rx.recv(2048)
            except BlockingIOError:
                break
            if len(frame) < 14 + 20 + 16 or frame[23] != socket.IPPROTO_ICMP:
                continue
            ihl = (frame[14] & 0x0F) * 4
            icmp = 14 + ihl
            if frame[icmp] != 0 or struct.unpack_from("!H", frame, icmp + 4)[0] != ident:
                continue
            (full_seq,) = struct.unpack_from("!Q", frame, icmp + 8)
            replies.append((full_seq, time.time(), frame[6:12].hex(":")))
    return {"started": start, "targets": targets, "sent": sent, "replies": replies, "send_errors": send_errors}


@dataclass(frozen=True)
class Outage:
    """How the reply stream went through a failover.

    `seconds` is the outage as the failover benchmark defines it: from the last
    reply of the old holder to the first reply of the new master. `worst_gap` is
    the longest silence of the whole stream after the failure began: with a big
    block it also counts addresses the announcement had not reached yet.
    """

    seconds: float
    last_before: float
    first_after: float
    worst_gap: float
    lost: int
    macs_after: tuple[str, ...]


def outage(result: dict, fail_at: float, new_mac: str) -> Outage:
    replies = sorted(result["replies"], key=lambda r: r[1])
    first = next((t for _, t, mac in replies if t > fail_at and mac == new_mac), None)
    if first is None:
        raise ValueError(f"no reply from the new master {new_mac} after the failure")
    last = max((t for _, t, mac in replies if t < first and mac != new_mac), default=fail_at)
    times = [t for _, t, _ in replies]
    start = max((t for t in times if t <= fail_at), default=fail_at)
    window = [start] + [t for t in times if t > start]
    worst = max((b - a for a, b in zip(window, window[1:])), default=0.0)
    answered = {seq for seq, _, _ in result["replies"]}
    lost = sum(1 for seq, t, _ in result["sent"] if t >= fail_at and seq not in answered)
    macs: list[str] = []
    for _, t, mac in replies:
        if t >= first and (not macs or macs[-1] != mac):
            macs.append(mac)
    return Outage(first - last, last, first, worst, lost, tuple(macs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", required=True)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--ifname", default="ext0")
    parser.add_argument("--interval", type=float, default=0.001)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = run(spread(args.block, args.count), args.ifname, args.interval, args.duration)
    with open(args.out, "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
