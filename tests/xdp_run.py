"""The XDP cluster filter on crafted frames through BPF_PROG_TEST_RUN: no interface needed.

The production object and the agent's own map encoders (agent.dataplane.xdp),
one block in slot 0. `bucket_of` reads the bucket the program computes for
each frame without any debug hook: with ownership set to the buckets whose bit
k is 1, a frame passes exactly when bit k of its bucket is 1.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from agent.config import Block
from agent.dataplane import bpf, xdp

XDP_DROP, XDP_PASS = 1, 2
OWN_MAC = "02:00:5e:10:00:01"
HOUR_NS = 3600 * 10**9


class FilterRun:
    def __init__(self, block: Block, interface_mac: str = OWN_MAC, slot: int = 0) -> None:
        self.program = bpf.BpfObject()
        self.block, self.slot = block, slot
        self.entry = xdp.load_block(self.program, slot, block, interface_mac)
        self.own(range(block.l2.buckets))

    def own(self, buckets: Iterable[int], expires_ns: int | None = None) -> None:
        """Own these buckets until `expires_ns` (default: an hour from now)."""
        if expires_ns is None:
            expires_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC) + HOUR_NS
        xdp.set_owned(self.entry, list(buckets), expires_ns)
        fd = self.program.map_fd("dpagent_blocks")
        bpf.update(fd, xdp.ffi.new("uint32_t *", self.slot), self.entry)

    def run(self, frame: bytes, repeat: int = 1) -> bpf.TestRun:
        return self.program.test_run(frame, repeat)

    def counters(self) -> dict[str, dict[str, int]]:
        fd, cpus = self.program.map_fd("dpagent_counters"), bpf.possible_cpus()
        return {"block": xdp.counters_of(fd, self.slot, cpus),
                "none": xdp.counters_of(fd, xdp.lib.DP_NO_BLOCK, cpus)}

    def buckets_of(self, frames: Sequence[bytes]) -> list[int]:
        """The bucket of each frame, one bit at a time over all frames."""
        found = [0] * len(frames)
        every = range(self.block.l2.buckets)
        for bit in range(max(1, (self.block.l2.buckets - 1).bit_length())):
            self.own(b for b in every if b >> bit & 1)
            for i, frame in enumerate(frames):
                if self.run(frame).verdict == XDP_PASS:
                    found[i] |= 1 << bit
        self.own(every)
        return found

    def close(self) -> None:
        self.program.close()
