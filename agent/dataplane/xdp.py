"""The XDP cluster filter as a dataplane step: cluster-mac blocks with backend "xdp".

`prepare` loads native/xdp_filter.bpf.o once (the verifier runs at start, not
in a takeover) and, for each such block, writes its slot (cluster MAC, the
interface's own MAC, hash, nothing owned), puts its prefixes and addresses in
the LPM tries, adds its MAC to the interface's multicast filter and attaches
the program to the interface: natively where the driver has XDP, else generic.
A program of ours that a crashed run left is replaced atomically; anyone
else's is left alone, and the block's filter is a problem until it goes.

`take` owns every bucket under a lease of one dead interval, one map write of
a few microseconds on the event loop; `refresh` re-arms the lease at every
advert and `release` owns nothing. An agent that dies leaves the program
attached with its lease running out, and the program then drops the block's
frames by itself (counted as expired), while the gate behind it does the same
in nftables. The map value holds ownership and lease together, so one write
changes both.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import logging
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor

from agent._native._xdp import ffi, lib
from agent.config import Block
from agent.core.buckets import HashFields
from agent.dataplane import bpf, maddr
from agent.dataplane.nft import own_mac
from agent.dataplane.step import StepResult

log = logging.getLogger("dpagent.xdp")

COUNTERS = ("passed", "dropped", "expired", "not_block", "not_cluster_mac", "malformed")
HASHES = {HashFields.SOURCE: lib.DP_HASH_SOURCE, HashFields.SOURCE_PORT: lib.DP_HASH_SOURCE_PORT,
          HashFields.SOURCE_PORTS: lib.DP_HASH_SOURCE_PORTS}
V4_KEY, V6_KEY = ffi.sizeof("struct dp_v4_key"), ffi.sizeof("struct dp_v6_key")
V6_NET = ffi.sizeof("struct dp_v6_net")
SIOCETHTOOL, ETHTOOL_GDRVINFO, DRVINFO_SIZE = 0x8946, 0x3, 196
# Drivers whose native XDP runs on a socket buffer that already has its packet type: the
# peer's transmit path classified the frame to the cluster MAC as multicast, and after
# the program's rewrite eth_type_trans() leaves an address of the device's own unmarked,
# so the stack keeps PACKET_MULTICAST (generic XDP resets it to PACKET_HOST). Checked
# with a TCP connection on this kernel (6.18); on other drivers the frame is new.
SKB_BACKED = frozenset({"veth"})


def driver(interface: str) -> str:
    """The interface's driver name (ETHTOOL_GDRVINFO), or "" if it has none to tell."""
    info = bytearray(struct.pack("=I", ETHTOOL_GDRVINFO)) + bytes(DRVINFO_SIZE - 4)
    request = struct.pack("16sP", interface.encode(), ctypes.addressof(ctypes.c_char.from_buffer(info)))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock, SIOCETHTOOL, request)
        except OSError:
            return ""
    return bytes(info[4:36]).split(b"\0", 1)[0].decode(errors="replace")


def _uses_xdp(block: Block) -> bool:
    return block.l2.mode == "cluster-mac" and block.l2.backend == "xdp"


def _now_ns() -> int:
    """bpf_ktime_get_ns()'s clock."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def lpm_keys(block: Block) -> tuple[bytes, bytes]:
    """The block's LPM keys, packed as struct dp_v4_key and dp_v6_key arrays: each
    prefix, then each single address as a /32 or /128."""
    keys: dict[int, list[bytes]] = {4: [], 6: []}
    for prefix in block.prefixes:
        keys[prefix.version].append(struct.pack("=I", prefix.prefixlen) + prefix.network_address.packed)
    for address in block.addresses:
        keys[address.version].append(struct.pack("=I", address.max_prefixlen) + address.packed)
    return b"".join(keys[4]), b"".join(keys[6])


def block_entry(block: Block, interface_mac: str) -> object:
    """The block's struct dp_block, nothing owned."""
    l2 = block.l2
    entry = ffi.new("struct dp_block *")
    entry.buckets, entry.seed, entry.hash = l2.buckets, l2.hash_seed, HASHES[HashFields(l2.hash)]
    entry.cluster_mac = bytes.fromhex(l2.cluster_mac.replace(":", ""))
    entry.own_mac = bytes.fromhex(interface_mac.replace(":", ""))
    return entry


def set_owned(entry, owned: Sequence[int], expires_ns: int) -> None:
    """Make `owned` the entry's buckets until `expires_ns` (bpf_ktime_get_ns)."""
    words = [0] * lib.DP_OWNED_WORDS
    for b in owned:
        words[b // 32] |= 1 << (b % 32)
    entry.owned = words
    entry.expires_ns = expires_ns


def write_members(program: bpf.BpfObject, slot: int, block: Block, add: bool) -> None:
    """Put the block's prefixes and addresses in the LPM tries, mapped to `slot` (or take
    them out)."""
    v4, v6 = lpm_keys(block)
    value = struct.pack("=I", slot)
    for keys, size, tree in ((v4, V4_KEY, "dpagent_v4"), (v6, V6_KEY, "dpagent_v6")):
        bpf.update_many(program.map_fd(tree), keys, size, value * (len(keys) // size) if add else None, 4)


def v4_index(loaded: Iterable[tuple[Block, int]]) -> dict[int, int]:
    """The entries of dpagent_v4_16 that are not 0, for these (block, slot) pairs: a /16
    that a prefix of /16 or shorter covers is its block's (slot + 1); a /16 holding a
    longer prefix or a single address asks the trie. Blocks are disjoint (agent.config)."""
    index: dict[int, int] = {}
    for block, slot in loaded:
        for prefix in block.prefixes:
            if prefix.version == 4:
                first = int(prefix.network_address) >> 16
                if prefix.prefixlen <= 16:
                    index.update(dict.fromkeys(range(first, first + (1 << (16 - prefix.prefixlen))), slot + 1))
                else:
                    index[first] = lib.DP_ASK_TRIE
        for address in block.addresses:
            if address.version == 4:
                index[int(address) >> 16] = lib.DP_ASK_TRIE
    return index


def v6_fold(net: bytes) -> int:
    """The dpagent_v6_116 entry of a /116 network, as the program's v6_fold computes it
    from the network's words loaded in CPU byte order."""
    a, b, c, d = struct.unpack("=4I", net)
    x = a ^ b ^ c ^ d
    return (x ^ (x >> 16)) & 0xFFFF


def v6_index(loaded: Iterable[tuple[Block, int]]) -> dict[int, tuple[bytes, int]]:
    """The entries of dpagent_v6_116 that are not 0, as (network, value): a /116 prefix
    is its block's (slot + 1); a /116 holding a longer prefix or a single address, and
    an entry two networks fold to, ask the trie."""
    index: dict[int, tuple[bytes, int]] = {}

    def put(net: bytes, value: int) -> None:
        held = index.setdefault(v6_fold(net), (net, value))
        if held[0] != net:
            index[v6_fold(net)] = (bytes(16), lib.DP_ASK_TRIE)
        elif held[1] != value:
            index[v6_fold(net)] = (net, lib.DP_ASK_TRIE)

    for block, slot in loaded:
        for prefix in block.prefixes:
            if prefix.version == 6:
                if prefix.prefixlen <= lib.DP_V6_PREFIXLEN:
                    for net in prefix.subnets(new_prefix=lib.DP_V6_PREFIXLEN):
                        put(net.network_address.packed, slot + 1)
                else:
                    put(prefix.supernet(new_prefix=lib.DP_V6_PREFIXLEN).network_address.packed, lib.DP_ASK_TRIE)
        for address in block.addresses:
            if address.version == 6:
                put((int(address) & ~0xFFF).to_bytes(16, "big"), lib.DP_ASK_TRIE)
    return index


def _changed(before: dict, after: dict, empty) -> dict:
    return {k: v for k, v in after.items() if before.get(k) != v} | {k: empty for k in before if k not in after}


def write_index(program: bpf.BpfObject, before: tuple[dict, dict], after: tuple[dict, dict]) -> None:
    """Change the /16 and /116 indexes from `before` to `after` ((v4_index, v6_index);
    entries absent are 0)."""
    v4 = _changed(before[0], after[0], 0)
    v6 = _changed(before[1], after[1], (bytes(16), 0))
    if v4:
        bpf.update_many(program.map_fd("dpagent_v4_16"), struct.pack(f"={len(v4)}I", *v4), 4,
                        struct.pack(f"={len(v4)}I", *v4.values()), 4)
    if v6:
        bpf.update_many(program.map_fd("dpagent_v6_116"), struct.pack(f"={len(v6)}I", *v6), 4,
                        b"".join(struct.pack("=16sI", net, value) for net, value in v6.values()), V6_NET)


def indexes(loaded: Iterable[tuple[Block, int]]) -> tuple[dict, dict]:
    pairs = list(loaded)
    return v4_index(pairs), v6_index(pairs)


def load_block(program: bpf.BpfObject, slot: int, block: Block, interface_mac: str) -> object:
    """One block alone in a freshly loaded program (tests, benchmarks): its entry, nothing
    owned, its addresses in the tries and the /16 index. Returns the entry."""
    entry = block_entry(block, interface_mac)
    bpf.update(program.map_fd("dpagent_blocks"), ffi.new("uint32_t *", slot), entry)
    write_members(program, slot, block, add=True)
    write_index(program, ({}, {}), indexes([(block, slot)]))
    return entry


def counters_of(fd: int, slot: int, cpus: int) -> dict[str, int]:
    """A slot's counters, summed over CPUs, from the counters map at `fd`."""
    values = ffi.new("struct dp_counters[]", cpus)
    if not bpf.lookup(fd, ffi.new("uint32_t *", slot), values):
        return dict.fromkeys(COUNTERS, 0)
    return {name: sum(int(values[cpu].count[i]) for cpu in range(cpus)) for i, name in enumerate(COUNTERS)}


class XdpFilter:
    """The filter's work. Loading in the step's worker; ownership and leases on the event
    loop, each one map write."""

    def __init__(self, lease: float) -> None:
        self.lease_ns = int(lease * 1e9)
        self._object: bpf.BpfObject | None = None
        self._prog_id = 0
        self._cpus = bpf.possible_cpus()
        self.loaded: dict[str, Block] = {}
        self.slots: dict[str, int] = {}
        self._entries: dict[str, object] = {}
        self._index: tuple[dict, dict] = ({}, {})
        self.owned: dict[str, int] = {}
        # interface -> attach mode ("native", "generic")
        self.attached: dict[str, str] = {}
        self.problems: dict[str, str] = {}
        self.refreshes = {"count": 0, "failed": 0, "last_problem": None}

    def _program(self) -> bpf.BpfObject:
        if self._object is None:
            self._object = bpf.BpfObject()
            self._prog_id = self._object.prog_id()
        return self._object

    def _fd(self, name: str) -> int:
        return self._program().map_fd(name)

    def _write(self, name: str) -> None:
        bpf.update(self._fd("dpagent_blocks"), ffi.new("uint32_t *", self.slots[name]), self._entries[name])

    def _attach(self, interface: str) -> None:
        """Attach to the interface, or replace a crashed run's program there."""
        ifindex = socket.if_nametoindex(interface)
        there = bpf.query(ifindex)
        if there.prog_id == self._prog_id:
            return
        if there.prog_id and there.name != bpf.FILTER_PROGRAM:
            raise bpf.BpfError(0, f"interface {interface} has XDP program {there.name!r} (id {there.prog_id}) "
                                  "of someone else: not replacing it")
        prog_fd = self._program().prog_fd()
        if there.prog_id and there.mode not in bpf.MODES:
            raise bpf.BpfError(0, f"interface {interface} has our filter attached in mode {there.mode}: "
                                  "not replacing it; run `dpagent cleanup`")
        if there.prog_id:
            bpf.attach(ifindex, prog_fd, there.mode, replace_id=there.prog_id)
            log.warning("xdp: replaced the filter an earlier run left on %s (program id %d)", interface, there.prog_id)
            self.attached[interface] = there.mode
            return
        if driver(interface) in SKB_BACKED:
            log.info("xdp: %s is a %s: attaching in generic mode, since its native XDP leaves a frame "
                     "PACKET_MULTICAST after the MAC rewrite and TCP would drop it", interface, driver(interface))
        else:
            try:
                bpf.attach(ifindex, prog_fd, "native")
                self.attached[interface] = "native"
                return
            except bpf.BpfError as native:
                log.info("xdp: no native XDP on %s (%s); attaching in generic mode", interface, native)
        bpf.attach(ifindex, prog_fd, "generic")
        self.attached[interface] = "generic"

    def _detach(self, interface: str) -> None:
        mode = self.attached.pop(interface, None)
        if mode is not None:
            bpf.detach(socket.if_nametoindex(interface), mode, self._prog_id)

    def _load(self, block: Block, configured: Sequence[Block]) -> None:
        """Load the block, or leave nothing of it behind: a later prepare tries again."""
        free = sorted(set(range(lib.DP_MAX_BLOCKS)) - set(self.slots.values()))
        if not free:
            raise bpf.BpfError(0, f"no free slot: one filter serves {lib.DP_MAX_BLOCKS} blocks")
        self.slots[block.name], self._entries[block.name] = free[0], block_entry(block, own_mac(block))
        self.loaded[block.name] = block
        try:
            self._write(block.name)
            write_members(self._program(), self.slots[block.name], block, add=True)
            self._sync_index()
            problem = maddr.change(block.interface, block.l2.cluster_mac, add=True)
            if problem is not None:
                raise bpf.BpfError(0, problem)
            self._attach(block.interface)
        except OSError:
            try:
                self._unload(block, configured)
            except OSError as exc:
                log.warning("xdp: undoing the partial load of block %s: %s", block.name, exc)
            raise
        self.problems.pop(block.name, None)

    def _unload(self, block: Block, configured: Sequence[Block]) -> None:
        """Everything of the block out of the maps, its slot free; the program detached
        from an interface no loaded block uses any more."""
        slot = self.slots[block.name]
        try:
            del self.loaded[block.name]
            self._sync_index()
            write_members(self._program(), slot, block, add=False)
            self._entries[block.name] = ffi.new("struct dp_block *")
            self._write(block.name)
        finally:
            self.loaded.pop(block.name, None)
            del self.slots[block.name], self._entries[block.name]
        if not any(b.interface == block.interface for b in self.loaded.values()):
            self._detach(block.interface)
        problem = maddr.release(block, configured)
        if problem is not None:
            raise bpf.BpfError(0, problem)

    def _sync_index(self) -> None:
        """The indexes as the loaded blocks want them."""
        after = indexes((b, self.slots[name]) for name, b in self.loaded.items())
        write_index(self._program(), self._index, after)
        self._index = after

    def adjust(self, old: Block, new: Block) -> StepResult:
        """A held block's addresses changed: the new keys in, then the old ones out."""
        started = time.perf_counter()
        result = StepResult()
        if new.name not in self.slots:
            result.problem = f"block {new.name} has no XDP filter: {self.problems.get(new.name, 'not prepared')}"
            return result
        slot = struct.pack("=I", self.slots[new.name])
        changes = []
        for before, after, size, tree in zip(lpm_keys(old), lpm_keys(new), (V4_KEY, V6_KEY), ("dpagent_v4", "dpagent_v6")):
            was = {before[i:i + size] for i in range(0, len(before), size)}
            now = {after[i:i + size] for i in range(0, len(after), size)}
            changes.append((tree, size, b"".join(sorted(now - was)), b"".join(sorted(was - now))))
        try:
            for tree, size, added, _removed in changes:
                bpf.update_many(self._fd(tree), added, size, slot * (len(added) // size), 4)
            self.loaded[new.name] = new
            self._sync_index()
            for tree, size, _added, removed in changes:
                bpf.update_many(self._fd(tree), removed, size, None, 4)
            result.applied = sum((len(added) + len(removed)) // size for _tree, size, added, removed in changes)
        except OSError as exc:
            result.problem = str(exc)
        result.seconds = time.perf_counter() - started
        return result

    def prepare(self, blocks: Sequence[Block]) -> dict[str, str]:
        """Load every xdp block not loaded as configured and unload those gone, unless owned."""
        wanted = {b.name: b for b in blocks if _uses_xdp(b)}
        for name, block in list(self.loaded.items()):
            if wanted.get(name) != block and name not in self.owned:
                try:
                    self._unload(block, blocks)
                except (OSError, ValueError) as exc:
                    self.problems[name] = str(exc)
        for name, block in wanted.items():
            if self.loaded.get(name) != block and name not in self.owned:
                try:
                    self._load(block, blocks)
                except (OSError, ValueError) as exc:
                    self.problems[name] = str(exc)
        return dict(self.problems)

    def own(self, block: Block, owned: Sequence[int]) -> StepResult:
        """Make `owned` the block's buckets on this node, under a fresh lease, in one write."""
        started = time.perf_counter()
        result = StepResult()
        entry = self._entries.get(block.name)
        if entry is None or block.name not in self.loaded:
            result.problem = f"block {block.name} has no XDP filter: {self.problems.get(block.name, 'not prepared')}"
        else:
            set_owned(entry, owned, _now_ns() + self.lease_ns if owned else 0)
            try:
                self._write(block.name)
            except bpf.BpfError as exc:
                result.problem = str(exc)
        if result.problem is None:
            result.applied = len(owned)
            if owned:
                self.owned[block.name] = len(owned)
            else:
                self.owned.pop(block.name, None)
        result.detail["buckets"] = len(owned)
        result.seconds = time.perf_counter() - started
        return result

    def refresh(self, blocks: Sequence[Block]) -> None:
        """Re-arm the lease of the owned ones among `blocks`."""
        expires = _now_ns() + self.lease_ns
        for block in blocks:
            if block.name not in self.owned:
                continue
            self._entries[block.name].expires_ns = expires
            self.refreshes["count"] += 1
            try:
                self._write(block.name)
            except bpf.BpfError as exc:
                self.refreshes["failed"] += 1
                self.refreshes["last_problem"] = str(exc)
                log.error("xdp: lease refresh of block %s failed: %s", block.name, exc)

    def kernel_entry(self, block: Block) -> bytes | None:
        entry = ffi.new("struct dp_block *")
        if block.name not in self.slots or not bpf.lookup(self._fd("dpagent_blocks"),
                                                          ffi.new("uint32_t *", self.slots[block.name]), entry):
            return None
        return ffi.buffer(entry)[:]

    def repair(self, block: Block) -> StepResult:
        """A held block's attachment, slot and MAC filter entry, put back if someone removed them."""
        started = time.perf_counter()
        result = StepResult()
        try:
            there = bpf.query(socket.if_nametoindex(block.interface))
            if there.prog_id != self._prog_id:
                self.attached.pop(block.interface, None)
                self._attach(block.interface)
                result.applied += 1
                result.detail["reattached"] = block.interface
            entry = self._entries[block.name]
            kernel = self.kernel_entry(block)
            # The lease moves at every refresh: compare what else the slot holds.
            if kernel is None or kernel[8:] != ffi.buffer(entry)[8:]:
                self._write(block.name)
                result.applied += 1
            if not maddr.listed(block.interface, block.l2.cluster_mac):
                problem = maddr.change(block.interface, block.l2.cluster_mac, add=True)
                if problem is not None:
                    raise bpf.BpfError(0, problem)
                result.applied += 1
        except (OSError, KeyError) as exc:
            result.problem = str(exc)
        result.seconds = time.perf_counter() - started
        return result

    def counters(self) -> dict[str, dict[str, int]]:
        """Per loaded block, and for frames of no block, what the program did with them."""
        if self._object is None:
            return {}
        fd = self._fd("dpagent_counters")
        # A copy: the worker may load or unload a block meanwhile (a reload).
        found = {name: counters_of(fd, slot, self._cpus) for name, slot in list(self.slots.items())}
        found["(no block)"] = counters_of(fd, lib.DP_NO_BLOCK, self._cpus)
        return found

    def remove_leftovers(self) -> StepResult:
        """Detach every filter of ours that this process did not attach: a crashed run's,
        on an interface that prepare did not claim for a block of this run."""
        result = StepResult()
        for ifindex, interface in socket.if_nameindex():
            try:
                there = bpf.query(ifindex)
                if there.prog_id and there.name == bpf.FILTER_PROGRAM and there.prog_id != self._prog_id:
                    if there.mode not in bpf.MODES:
                        raise bpf.BpfError(0, f"attached in mode {there.mode}, which the agent does not detach")
                    bpf.detach(ifindex, there.mode, there.prog_id)
                    result.applied += 1
                    result.detail.setdefault("detached", []).append(interface)
            except bpf.BpfError as exc:
                result.fail(f"{exc.errno or 'EIO'}", [f"{interface}: {exc}"])
        return result

    def close(self) -> None:
        """Detach from every interface, take the MACs out of the multicast filters, and
        free the program and its maps."""
        for interface in list(self.attached):
            try:
                self._detach(interface)
            except bpf.BpfError as exc:
                log.warning("xdp: %s", exc)
        for block in self.loaded.values():
            problem = maddr.change(block.interface, block.l2.cluster_mac, add=False)
            if problem is not None:
                log.warning("xdp: %s", problem)
        self.loaded.clear()
        if self._object is not None:
            self._object.close()
            self._object = None


class XdpStep:
    """Loads in `worker`; ownership and leases on the event loop."""

    facility = "xdp"
    verbs = {"take": "own-buckets", "release": "drop-buckets", "adjust": "xdp-members"}

    def __init__(self, worker: Executor, lease: float) -> None:
        self._worker = worker
        self._filter = XdpFilter(lease)
        self._leftovers: dict = {}
        # Active/active blocks: the buckets the core gave this node.
        self._shares: dict[str, frozenset[int]] = {}

    async def _run(self, func, *args):
        return await asyncio.get_running_loop().run_in_executor(self._worker, func, *args)

    async def prepare(self, blocks: Sequence[Block]) -> None:
        problems = await self._run(self._filter.prepare, tuple(blocks))
        for name, problem in problems.items():
            log.error("XDP filter of block %s not loaded: %s", name, problem)

    async def take(self, block: Block) -> StepResult:
        """All buckets (active/passive); none (active/active: its share comes as own_buckets)."""
        self._shares.pop(block.name, None)
        return self._filter.own(block, () if block.shared else range(block.l2.buckets))

    async def own_buckets(self, block: Block, buckets: frozenset[int]) -> StepResult:
        """An active/active block's share changed: one map write."""
        self._shares[block.name] = buckets
        return self._filter.own(block, sorted(buckets))

    async def release(self, block: Block) -> StepResult:
        return self._filter.own(block, ())

    async def adjust(self, old: Block, new: Block) -> StepResult:
        return await self._run(self._filter.adjust, old, new)

    async def repair(self, block: Block) -> StepResult:
        return await self._run(self._filter.repair, block)

    async def remove_leftovers(self) -> StepResult:
        result = await self._run(self._filter.remove_leftovers)
        self._leftovers = result.as_dict()
        return result

    def refresh(self, blocks: Sequence[Block]) -> None:
        self._filter.refresh(blocks)

    def cancel(self, name: str) -> None:
        """Nothing to stop: an ownership change is one map write."""

    def status(self) -> dict:
        filt = self._filter
        counters = filt.counters()
        return {
            "lease_s": filt.lease_ns / 1e9,
            "attached": dict(filt.attached),
            "blocks": {name: {"interface": b.interface, "attach_mode": filt.attached.get(b.interface),
                              "slot": filt.slots.get(name), "buckets": b.l2.buckets, "hash": b.l2.hash,
                              "owned": filt.owned.get(name, 0), "packets": counters.get(name, {})}
                       for name, b in sorted(dict(filt.loaded).items())},
            "no_block_packets": counters.get("(no block)", {}),
            "problems": dict(filt.problems),
            "refresh": dict(filt.refreshes),
            "leftovers_removed": self._leftovers,
        }

    async def close(self) -> None:
        await self._run(self._filter.close)
