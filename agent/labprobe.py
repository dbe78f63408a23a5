"""A 1 ms ICMP probe of every one of several addresses across a block, run in the lab's client namespace.

Every `interval` (1 ms) the probe sends one echo request to each target, so each
address is probed every 1 ms on its own, however many there are. Requests go out
through a raw ICMP socket (the kernel resolves neighbours as a real client
would); replies are read from an AF_PACKET socket, so each one carries the MAC of
the node that answered, and the kernel's receive timestamp, so a probe process
that waits for a CPU does not stretch the gaps it measures. That is how a
benchmark proves that no two nodes answered for the block at once, and where the
outage of each address is read from (`address_outages`).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import signal
import socket
import statistics
import struct
import sys
import time
from dataclasses import dataclass

from agent.core.frames import checksum

ETH_P_IP = 0x0800
PROBE_TARGETS = 16
SO_TIMESTAMPNS = 35  # = SCM_TIMESTAMPNS; not in Python's socket module
SOL_RAW = 255
ICMP_FILTER = 1
TIMESPEC = struct.Struct("@qq")


def echo_request(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq & 0xFFFF)
    payload = struct.pack("!Q", seq)
    return struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, seq & 0xFFFF) + payload


def spread(block: str, count: int) -> list[str]:
    """`count` addresses evenly spaced over the block, so every part of it is probed."""
    net = ipaddress.ip_network(block)
    step = max(1, net.num_addresses // count)
    return [str(net.network_address + min(i * step + step // 2, net.num_addresses - 1)) for i in range(count)]


def probe_targets(block: str, count: int = PROBE_TARGETS) -> list[str]:
    """`count` addresses across the block: its first and its last usable address and the
    others evenly between, so both ends of an announcement wave are among them."""
    net = ipaddress.ip_network(block)
    first, last = int(net.network_address), int(net.broadcast_address)
    if net.num_addresses > 2:
        first += 1  # the network address; for IPv4 also the broadcast one below
        if net.version == 4:
            last -= 1
    count = max(1, min(count, last - first + 1))
    if count == 1:
        return [str(ipaddress.ip_address(first))]
    return [str(ipaddress.ip_address(first + round(i * (last - first) / (count - 1)))) for i in range(count)]


def _realtime() -> bool:
    """SCHED_FIFO for the probe, so it sends on time while the nodes' takeover work loads the CPUs."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except OSError:
        return False
    return True


def run(targets: list[str], ifname: str, interval: float, duration: float, realtime: bool = False) -> dict:
    ident = os.getpid() & 0xFFFF
    tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    tx.setblocking(False)
    # A raw ICMP socket also receives every ICMP packet; the replies are read from rx, so let none queue here.
    tx.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", 0xFFFFFFFF))
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    rx.bind((ifname, ETH_P_IP))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    rx.setblocking(False)
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    is_realtime = _realtime() if realtime else False
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
            for index, target in enumerate(targets):
                try:
                    tx.sendto(echo_request(ident, seq), (target, 0))
                except OSError:
                    send_errors += 1
                sent.append((seq, time.time(), index))
                seq += 1
            next_send += interval
            if next_send < now:  # fell behind: no catch-up burst, the send times show the pause
                next_send = now + interval
        readable, _, _ = select.select([rx], [], [], max(0.0, next_send - time.monotonic()))
        while readable:
            try:
                frame, ancillary, _, _ = rx.recvmsg(2048, 64)
            except BlockingIOError:
                break
            if len(frame) < 14 + 20 + 16 or frame[23] != socket.IPPROTO_ICMP:
                continue
            ihl = (frame[14] & 0x0F) * 4
            icmp = 14 + ihl
            if frame[icmp] != 0 or struct.unpack_from("!H", frame, icmp + 4)[0] != ident:
                continue
            (full_seq,) = struct.unpack_from("!Q", frame, icmp + 8)
            at = next((sec + nsec / 1e9 for level, kind, data in ancillary
                       if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS
                       for sec, nsec in [TIMESPEC.unpack_from(data)]), None)
            replies.append((full_seq, at if at is not None else time.time(), frame[6:12].hex(":")))
    return {"started": start, "targets": targets, "interval": interval, "realtime": is_realtime,
            "sent": sent, "replies": replies, "send_errors": send_errors}


@dataclass(frozen=True)
class Outage:
    """How the reply stream as a whole went through a failover.

    `seconds` is from the last reply of the old holder to the first reply of the
    new master, for any address: the first address back. `worst_gap` is the
    longest silence of the whole stream after the failure began. Per address,
    see `address_outages`.
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


@dataclass(frozen=True)
class AddressOutage:
    """One probed address through a failover.

    `seconds` is its outage: the longest silence of this address from its last
    reply before the failure to its first reply from the new holder. When the old
    holder stops answering at the failure (node death) that is exactly the gap
    from its last reply before the failure to its first after; when the old
    holder goes on answering for a while (a graceful hand-over) the time it still
    answered is not counted as outage. `back` is false when the new holder never
    answered it before `ended_at`: then `seconds` is only a lower bound.
    `max_send_gap` is the probe's own longest pause between two requests to the
    address over that stretch: the resolution of `seconds` (1 ms unless the probe
    itself was held up).
    """

    target: str
    seconds: float
    last_before: float
    first_after: float | None
    back: bool
    old_after_new: int
    max_send_gap: float


def address_outages(result: dict, fail_at: float, new_mac: str, ended_at: float | None = None) -> list[AddressOutage]:
    index_of = {seq: index for seq, _, index in result["sent"]}
    replies: dict[int, list[tuple[float, str]]] = {i: [] for i in range(len(result["targets"]))}
    for seq, t, mac in result["replies"]:
        if seq in index_of:
            replies[index_of[seq]].append((t, mac))
    sends: dict[int, list[float]] = {i: [] for i in replies}
    for _, t, index in result["sent"]:
        sends[index].append(t)
    ended = ended_at if ended_at is not None else max([t for _, t, _ in result["sent"]] + [fail_at])
    found = []
    for index, target in enumerate(result["targets"]):
        stream = sorted(replies[index])
        first_new = next((t for t, mac in stream if t > fail_at and mac == new_mac), None)
        start = max((t for t, _ in stream if t <= fail_at), default=fail_at)
        stop = first_new if first_new is not None else ended
        times = [start] + [t for t, _ in stream if start < t <= stop] + ([] if first_new is not None else [stop])
        gap, last_before = max(((b - a, a) for a, b in zip(times, times[1:])), default=(0.0, start))
        sent = [t for t in sends[index] if start <= t <= stop]
        send_gap = max((b - a for a, b in zip(sent, sent[1:])), default=0.0)
        old_after = sum(1 for t, mac in stream if first_new is not None and t > first_new and mac != new_mac)
        found.append(AddressOutage(target, gap, last_before, first_new, first_new is not None, old_after, send_gap))
    return found


def outage_stats(outages: list[AddressOutage]) -> dict[str, float]:
    """first (the address back soonest), median and worst outage over the addresses, in seconds."""
    values = [o.seconds for o in outages]
    return {"first": min(values), "median": statistics.median(values), "worst": max(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", required=True)
    parser.add_argument("--count", type=int, default=PROBE_TARGETS)
    parser.add_argument("--ifname", default="ext0")
    parser.add_argument("--interval", type=float, default=0.001, help="seconds between two requests to one address")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--realtime", action="store_true", help="run under SCHED_FIFO")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = run(probe_targets(args.block, args.count), args.ifname, args.interval, args.duration, args.realtime)
    with open(args.out, "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
