"""Hostile sync frames against a running backup, on the real kernel: forged, malformed,
truncated, oversized and replayed datagrams, sent to its sync port from its peer's own
address with the peer's TTL (what an attacker on the link can do), are each dropped and
counted under their reason, globally and for the peer; the cache keeps its entries, the
agent runs on as BACKUP, and the sync still works afterwards.

The replayed frames are real ones, recorded with an AF_PACKET socket on the backup's hb1
while the master synced 200 new entries, which it then deleted: taken again, those frames
would put the entries back into the cache, so an unchanged count proves they were refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import select
import shutil
import socket
import struct
from collections import Counter

import pytest

from agent.core import syncwire
from agent.lab import KEY_HEX, NODES, Lab
from agent.netns import enter
from ctlab import build_writer, cached, conntrack_stats, logs, transitions, wait, write_entries

pytestmark = pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("conntrack")),
                                reason="needs gcc (bench/ct_writer.c) and conntrack")

SYNC_PORT = 7789
MASTER, BACKUP = NODES[1].hb1, NODES[2].hb1
KEY = bytes.fromhex(KEY_HEX)
RECORDED = 200
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
# Adverts every 0.5 s: the CPU load of other suites on two cores must not make the pair flap.
ADVERT = 0.5


def sign(signed: bytes, key: bytes = KEY) -> bytes:
    return signed + hmac.new(key, signed, hashlib.sha256).digest()


def header(frame: bytes) -> list:
    return list(syncwire.HEADER.unpack_from(frame))


def resign(frame: bytes, **fields) -> bytes:
    """A recorded frame with header fields changed, signed again with the real key (an
    insider's forgery: everything but the MAC's secret is checked after it)."""
    names = ("magic", "version", "kind", "key_id", "flags", "node_id", "epoch", "serial", "seq", "ack",
             "ack_epoch", "count")
    values = dict(zip(names, header(frame)))
    values.update(fields)
    body = frame[syncwire.HEADER_SIZE:-syncwire.MAC_SIZE]
    return sign(syncwire.HEADER.pack(*(values[n] for n in names)) + body)


class Recorder:
    """Inbound sync datagrams from the master on the backup's hb1: an AF_PACKET socket (cooked,
    so IP packets) in fw2's namespace."""

    def __init__(self, lab: Lab) -> None:
        with enter(lab.ns("fw2")):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            self.sock.bind(("hb1", ETH_P_IP))
        self.frames: list[bytes] = []

    def drain(self) -> list[bytes]:
        while select.select([self.sock], [], [], 0)[0]:
            packet, address = self.sock.recvfrom(65535)
            if address[2] == PACKET_OUTGOING or len(packet) < 28:
                continue
            ihl = (packet[0] & 0x0F) * 4
            proto, src, dst = packet[9], socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])
            flags_fragment = struct.unpack_from(">H", packet, 6)[0]
            if proto != socket.IPPROTO_UDP or src != MASTER or dst != BACKUP or flags_fragment & 0x3FFF:
                continue
            dport, length = struct.unpack_from(">2xHH", packet, ihl)
            if dport == SYNC_PORT:
                self.frames.append(packet[ihl + 8:ihl + length])
        return self.frames

    def close(self) -> None:
        self.sock.close()


def sender(lab: Lab, ttl: int = 255) -> socket.socket:
    """A UDP socket in the master's namespace, from its hb1 address, with the sync's TTL."""
    with enter(lab.ns("fw1")):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((MASTER, 0))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    return sock


def drops(lab: Lab) -> tuple[Counter, Counter]:
    """fw2's drop counters: its own (every datagram), and its channel's for the master."""
    stats = conntrack_stats(lab, 2)
    return Counter(stats.get("drops", {})), Counter(stats.get("peers", {}).get(MASTER, {}).get("drops", {}))


def test_hostile_frames_are_dropped_counted_and_change_nothing(lab: Lab) -> None:
    writer = build_writer(lab)
    lab.start_agent(1, lab.write_config(1, advert_interval=ADVERT, conntrack="cache"))
    lab.wait_state(1, "MASTER", timeout=60)
    lab.start_agent(2, lab.write_config(2, advert_interval=ADVERT, conntrack="cache"))
    lab.wait_master_seen(2, 1, timeout=60)
    wait(lambda: conntrack_stats(lab, 2).get("in_sync"), 60, "the pair to be in sync")
    baseline = cached(lab, 2)

    # Real frames: the master syncs RECORDED new entries, recorded on their way in.
    recorder = Recorder(lab)
    try:
        write_entries(lab, 1, writer, RECORDED, offset=0)
        wait(lambda: cached(lab, 2) == baseline + RECORDED, 60, "fw2 to cache the new entries",
             lambda: json.dumps(conntrack_stats(lab, 2))[:2000])
        wait(lambda: any(header(f)[2] == syncwire.SyncType.DATA and header(f)[11] for f in recorder.drain()),
             30, "a recorded DATA frame")
    finally:
        recorder.close()
    recorded = recorder.frames
    data = [f for f in recorded if header(f)[2] == syncwire.SyncType.DATA and header(f)[11]]
    # The master deletes them again: a replay of the frames that brought them would bring them back.
    lab.exec("fw1", ["conntrack", "-D", "-d", "198.19.0.1"])
    wait(lambda: cached(lab, 2) == baseline, 60, "fw2 to drop the deleted entries")
    wait(lambda: conntrack_stats(lab, 2).get("in_sync"), 60, "the pair to be in sync again")

    sample = data[0]
    _, _, _, _, _, node_id, epoch, _, _, _, ack_epoch, _ = header(sample)
    hostile: dict[str, list[bytes]] = {
        # Forged: a flipped MAC bit, and a whole frame signed with another key.
        "auth": [sample[:-1] + bytes([sample[-1] ^ 1]), sign(sample[:-syncwire.MAC_SIZE], b"not the key" * 3),
                 # Truncated: the tail cut off, so the MAC is over other bytes.
                 sample[:-7], sample[:syncwire.HEADER_SIZE + syncwire.MAC_SIZE + 10]],
        "key_id": [sample[:4] + b"\x09" + sample[5:]],
        # Malformed: not our magic, not our version.
        "magic": [b"XX" + sample[2:], b"\0" * 200],
        "version": [sample[:2] + b"\x07" + sample[3:]],
        # Truncated below a header and a MAC; an empty datagram.
        "short": [sample[:syncwire.HEADER_SIZE], sample[:10], b""],
        # Oversized: past the largest frame the codec takes (sent as IP fragments).
        "long": [sample + b"\0" * (syncwire.MAX_DATAGRAM_SIZE + 1 - len(sample)), b"DS" + b"\0" * 65_100],
        # Authenticated but inconsistent (a holder of the key): each one field wrong.
        "type": [resign(sample, kind=9)],
        "flags": [resign(sample, flags=0x40)],
        "count": [resign(sample, count=header(sample)[11] + 1)],
        # ... or from the wrong incarnation or node: never merged, whatever it carries.
        "old_epoch": [resign(sample, epoch=epoch - 1)],
        "not_ours": [resign(sample, ack_epoch=ack_epoch - 1)],
        "future_epoch": [resign(sample, epoch=2**64 - 1)],
        "own_id": [resign(sample, node_id=2)],
        "node_id": [resign(sample, node_id=node_id + 40)],
    }
    before_state = transitions(lab, 2)
    own_before, peer_before = drops(lab)
    sock = sender(lab)
    try:
        for frames in hostile.values():
            for frame in frames:
                sock.sendto(frame, (BACKUP, SYNC_PORT))
        # Replayed: every recorded frame, data and control, again, as they were.
        for frame in recorded:
            sock.sendto(frame, (BACKUP, SYNC_PORT))
    finally:
        sock.close()
    # Right bytes, wrong hop count: not from the link itself (GTSM).
    low = sender(lab, ttl=64)
    try:
        low.sendto(sample, (BACKUP, SYNC_PORT))
    finally:
        low.close()

    def counted() -> tuple[Counter, Counter] | None:
        own, peer = drops(lab)
        own_new, peer_new = own - own_before, peer - peer_before
        done = all(own_new[r] >= len(f) and peer_new[r] >= len(f) for r, f in hostile.items())
        replays = own_new["duplicate"] + own_new["replay"]
        return (own_new, peer_new) if done and own_new["ttl"] >= 1 and replays >= len(recorded) else None

    own_new, peer_new = wait(counted, 60, "fw2 to count every hostile frame",
                             lambda: json.dumps(conntrack_stats(lab, 2))[:3000] + logs(lab, 2))
    # Each under its own reason, once: nothing was counted twice or under another reason.
    for reason, frames in hostile.items():
        assert own_new[reason] == len(frames) and peer_new[reason] == len(frames), (reason, own_new, peer_new)
    assert own_new["ttl"] == 1 and peer_new["ttl"] == 0
    assert peer_new["duplicate"] + peer_new["replay"] >= len(recorded)

    # Nothing moved: the cache, the agent, its role.
    assert cached(lab, 2) == baseline
    assert lab.agents[2].poll() is None
    assert lab.state(2) == "BACKUP" and lab.state(1) == "MASTER"
    assert transitions(lab, 2) == before_state
    # And the sync goes on: new entries still arrive.
    write_entries(lab, 1, writer, 10, offset=RECORDED)
    wait(lambda: cached(lab, 2) == baseline + 10, 60, "fw2 to cache entries made after the attack",
         lambda: json.dumps(conntrack_stats(lab, 2))[:2000])
    assert transitions(lab, 2) == before_state

