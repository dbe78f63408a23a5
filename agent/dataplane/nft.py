"""The gate: a block is served by this node only while its lease in nftables holds.

`prepare` loads every block's gate closed (agent.core.ruleset describes it);
`take` opens it by adding the block's lease elements with a timeout of one dead
interval, and the runtime's advert timer keeps them alive with `refresh`. An
agent that dies or hangs stops refreshing, the kernel lets the elements expire,
and the node stops answering ARP / NDP and accepting traffic for the block by
itself, while the peer takes over. A change the kernel rejects leaves table
dpagent as it was, and its error text (libnftables', or the errno of a lease
message) becomes the step's problem. (A change cut into several transactions,
see below: an adjust is undone; a block whose load fails part-way is removed.)

Bulk work (sets, chains, rules, member deltas) goes through libnftables JSON in
the worker the step is given. The leases go straight to the kernel as nfnetlink
messages (agent.core.ruleset says why), ~20-40 us each, from the event loop
itself: `refresh` is called there on every advert, so a lease runs out exactly
when the adverts stop, and take and release pay no thread hop. A lease message
waits for a bulk transaction the kernel is applying, so while any block is open
bulk work is cut into transactions of ruleset.ELEMENTS_PER_TRANSACTION elements.
Each thread has its own libnftables context and netlink socket.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path

import nftables

from agent.config import Block
from agent.core import ruleset
from agent.dataplane.step import StepResult

log = logging.getLogger("dpagent.gate")

# libnftables' error text repeats the command for every error; keep a status readable.
PROBLEM_MAX = 1000


# The kernel applies a batch and queues its answers before send() returns (having waited,
# if need be, for a transaction being applied, which bulk work keeps short while a block
# is open). This only bounds a lost reply; the event loop waits for it, so it is short.
REPLY_TIMEOUT = 0.25
RECEIVE_BUFFER = 1 << 20


def _errno_text(code: int) -> str:
    return f"{errno.errorcode.get(code, str(code))} ({os.strerror(code)})"


class LeaseSocket:
    """A NETLINK_NETFILTER socket for core.ruleset's lease messages, for one thread."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ruleset.NETLINK_NETFILTER)
        self._sock.bind((0, 0))
        self._sock.settimeout(REPLY_TIMEOUT)
        self._seq = 0

    def _replies(self, wanted: set[int], until_done: bool) -> tuple[list[ruleset.Reply], str | None]:
        """Replies to our sequence numbers: until each in `wanted` is acked, or, for a dump,
        until it is done. Replies to an earlier request that timed out are skipped."""
        got: list[ruleset.Reply] = []
        pending = set(wanted)
        while pending:
            try:
                data = self._sock.recv(RECEIVE_BUFFER)
            except TimeoutError:
                return got, f"no reply from the kernel within {REPLY_TIMEOUT:g} s"
            for reply in ruleset.replies(data):
                if reply.seq not in wanted:
                    continue
                got.append(reply)
                if reply.kind == ruleset.NLMSG_ERROR or (until_done and reply.kind == ruleset.NLMSG_DONE):
                    pending.discard(reply.seq)
        return got, None

    def lease(self, names: list[str], lease: float, close: bool = False) -> str | None:
        """Arm (or close) these blocks' leases in one transaction; None, or what failed."""
        return self.transact(lambda seq: ruleset.lease_batch(names, lease, seq, close=close))

    def transact(self, build: Callable[[int], tuple[bytes, dict[int, str]]]) -> str | None:
        """Send the batch `build(first sequence number)` makes and wait for its acks;
        None, or what failed."""
        data, acked = build(self._seq + 1)
        self._seq += len(acked) + 2
        self._sock.send(data)
        got, problem = self._replies(set(acked), until_done=False)
        # The kernel acks every message of a failed batch, the rolled-back ones with 0.
        failed = [f"{acked[r.seq]}: {_errno_text(-r.error)}" for r in got if r.error]
        return "; ".join(failed) or problem

    def dump(self, request: Callable[[int], bytes]) -> tuple[list[ruleset.Reply], str | None]:
        """The messages of one dump (`request(seq)` builds it); an error ends it."""
        self._seq += 1
        seq = self._seq
        self._sock.send(request(seq))
        got, problem = self._replies({seq}, until_done=True)
        errors = [r.error for r in got if r.kind == ruleset.NLMSG_ERROR and r.error]
        return [r for r in got if r.kind not in (ruleset.NLMSG_ERROR, ruleset.NLMSG_DONE)], (
            _errno_text(-errors[0]) if errors else problem)

    def close(self) -> None:
        self._sock.close()


def own_mac(block: Block) -> str:
    """The interface's MAC, which the kernel writes into what a cluster-mac block's gate
    rewrites; raises ValueError (a problem of the block's) when it cannot be read."""
    if block.l2.mode != "cluster-mac":
        return ruleset.NO_MAC
    try:
        return (Path("/sys/class/net") / block.interface / "address").read_text().strip()
    except OSError as exc:
        raise ValueError(f"interface {block.interface}: {exc.strerror}") from None


def problem_text(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    joined = " | ".join(lines) or "rejected without a message"
    return joined if len(joined) <= PROBLEM_MAX else joined[: PROBLEM_MAX - 3] + "..."


class KernelHandles:
    """A libnftables context and a netlink socket per thread: neither is safe to share
    between the worker and the event loop."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _nft(self) -> nftables.Nftables:
        context = getattr(self._local, "nft", None)
        if context is None:
            context = self._local.nft = nftables.Nftables()
        return context

    def _netlink(self) -> LeaseSocket:
        sock = getattr(self._local, "netlink", None)
        if sock is None:
            sock = self._local.netlink = LeaseSocket()
        return sock

    def _close_netlink(self) -> None:
        """Close this thread's netlink socket; its libnftables context goes with the thread."""
        sock = getattr(self._local, "netlink", None)
        if sock is not None:
            sock.close()
            self._local.netlink = None


class Gate(KernelHandles):
    """The gate's work, blocking. Lease work (take, release, refresh) runs on the event
    loop; everything else in the step's worker. `loaded` is what the kernel holds of each
    block's gate after the last change that succeeded; `open` the blocks taken and not
    released."""

    def __init__(self, lease: float) -> None:
        super().__init__()
        ruleset.lease_ms(lease)
        self.lease = lease
        self._prepared = False
        self._configured: set[str] = set()
        self.loaded: dict[str, Block] = {}
        self.open: set[str] = set()
        self.problems: dict[str, str] = {}
        self.armed_at: dict[str, float] = {}
        self.refreshes: dict = {"count": 0, "failed": 0, "last_s": 0.0, "max_s": 0.0, "last_problem": None}

    def _json(self, commands: list[dict]) -> str | None:
        """Apply commands in one transaction; None, or libnftables' error text."""
        rc, _output, error = self._nft().json_cmd(ruleset.document(commands))
        return None if rc == 0 else problem_text(error)

    def _apply(self, commands: list[dict]) -> tuple[str | None, list[list[dict]]]:
        """Apply in one transaction, or, while a block is open (its lease message must not
        wait long for the kernel), in bounded ones. Returns the problem of the first one
        rejected and the transactions applied before it."""
        limit = ruleset.ELEMENTS_PER_TRANSACTION if self.open else None
        done: list[list[dict]] = []
        for transaction in ruleset.transactions(commands, limit):
            problem = self._json(transaction)
            if problem is not None:
                return problem, done
            done.append(transaction)
        return None, done

    @staticmethod
    def _timed(work: Callable[[StepResult], None]) -> StepResult:
        """Run `work`; input that cannot become a ruleset is a problem, not a crash."""
        started = time.perf_counter()
        result = StepResult()
        try:
            work(result)
        except (ValueError, TypeError, AttributeError) as exc:
            result.problem = f"bad input: {exc}"
        except OSError as exc:
            result.problem = f"netlink: {exc}"
        result.seconds = time.perf_counter() - started
        return result

    # --- bulk work (the worker) --------------------------------------------------------------

    def prepare(self, blocks: Sequence[Block]) -> dict[str, str]:
        """Load, closed, the gate of every configured block that needs it (`_wanted`) and
        drop those of blocks no longer configured unless open (their release does). The
        first call also removes whatever an earlier run left, in the same transaction.
        If a change is rejected, block by block, so that one bad block keeps no other
        out. Returns each failed block's problem."""
        try:
            self.problems = self._prepare(blocks)
        except OSError as exc:
            self.problems = {str(b.name): f"libnftables: {exc}" for b in blocks}
        return self.problems

    def _prepare(self, blocks: Sequence[Block]) -> dict[str, str]:
        self._configured = {str(b.name) for b in blocks}
        problems: dict[str, str] = {}
        held: dict[str, ruleset.Members] = {}
        parts: list[tuple[str, Block | None, list[dict]]] = [
            (name, None, ruleset.remove_block(name))
            for name in list(self.loaded) if name not in self._configured and name not in self.open]
        for block in blocks:
            try:
                if self._wanted(block):
                    held[block.name] = ruleset.members(block)
                    parts.append((block.name, block, ruleset.rebuild(block, own_mac(block), False, held[block.name])))
            except (ValueError, TypeError, AttributeError) as exc:
                problems[str(block.name)] = f"bad input: {exc}"
        head = [] if self._prepared else ruleset.delete_tables()
        problem, done = self._apply(head + [c for _name, _block, commands in parts for c in commands])
        if problem is None:
            for name, block, _commands in parts:
                self._complete(name, block, problems, held.get(name))
        else:
            if head and not done and self._json(head) is not None:
                return {str(b.name): problem for b in blocks}
            # Each part replaces whatever state the rejected load left of its block.
            for name, block, commands in parts:
                problem, done = self._apply(commands)
                if problem is None:
                    self._complete(name, block, problems, held.get(name))
                    continue
                problems[name] = problem
                if done and self._json(ruleset.remove_block(name)) is None:
                    self._record(name, None)
        self._prepared = True
        # Taken while its gate was missing (a take fails then): open now that it is there.
        opened = [name for name, block, _commands in parts if block is not None and name in self.open
                  and self.loaded.get(name) is block]
        problem = self._arm(opened) if opened else None
        problems |= {name: problem for name in opened if problem}
        return problems

    def _wanted(self, block: Block) -> bool:
        """Whether prepare (re)builds this block's gate: not loaded yet, or changed while
        closed. An open block changes by `adjust` alone, never losing its lease."""
        loaded = self.loaded.get(block.name)
        if loaded is None:
            return True
        return block.name not in self.open and (ruleset.members(loaded) != ruleset.members(block)
                                                or loaded.l2 != block.l2)

    def _members(self, block: Block, held: ruleset.Members | None = None) -> str | None:
        """The block's loose addresses into its plain sets, as nfnetlink batches (ruleset
        says why); None, or what the kernel refused."""
        for chunk in ruleset.member_chunks(block.name, ruleset.members(block) if held is None else held):
            problem = self._netlink().transact(lambda seq, c=chunk: ruleset.member_batch(c, seq))
            if problem is not None:
                return problem
        return None

    def _complete(self, name: str, block: Block | None, problems: dict[str, str],
                  held: ruleset.Members | None) -> None:
        """Record a part of prepare whose JSON loaded: a block's gate is complete once its
        loose addresses are in; one that cannot have them is removed, not kept half-full."""
        if block is not None:
            problem = self._members(block, held)
            if problem is not None:
                problems[name] = problem
                if self._json(ruleset.remove_block(name)) is None:
                    self._record(name, None)
                return
        self._record(name, block)

    def _record(self, name: str, block: Block | None) -> None:
        if block is None:
            self.loaded.pop(name, None)
        else:
            self.loaded[name] = block

    def adjust(self, old: Block, new: Block) -> StepResult:
        """Only the difference; a block whose gate never loaded is built. A difference cut
        into several transactions is undone when a later one is rejected."""
        def work(result: StepResult) -> None:
            base = self.loaded.get(new.name)
            if base is None:
                self._restore(result, new)
                return
            before, after = ruleset.members(base), ruleset.members(new)
            result.problem, done = self._apply(ruleset.member_changes(new.name, before, after))
            if result.problem is None:
                result.applied = ruleset.changed(before, after)
                self.loaded[new.name] = new
                return
            undone = all(self._json(ruleset.inverse(t)) is None for t in reversed(done))
            if not undone:
                problem = result.problem
                self._restore(result, base)
                result.problem = problem
        return self._timed(work)

    def restore(self, block: Block) -> StepResult:
        """Rebuild a block's gate that someone broke (and open it again if it is open)."""
        return self._timed(lambda result: self._restore(result, block))

    def _restore(self, result: StepResult, block: Block) -> None:
        """Rebuild and, if open, arm: libnftables, then a lease message, so an open block
        is closed in between for a moment."""
        held = ruleset.members(block)
        result.problem, _done = self._apply(ruleset.rebuild(block, own_mac(block), False, held))
        result.problem = result.problem or self._members(block, held)
        if result.problem is not None:
            return
        self.loaded[block.name] = block
        self.problems.pop(block.name, None)
        result.applied = 1
        result.detail["rebuilt"] = block.name
        if block.name in self.open:
            result.problem = self._arm([block.name])

    def repair(self, block: Block) -> StepResult:
        """Rebuild the gate of a block whose chains or rules are gone (`nft flush ruleset`
        by the operator's firewall script, say). The rules are counted from a netlink dump
        of table dpagent's rules (libnftables would fetch every interval set's elements)."""
        def work(result: StepResult) -> None:
            counted: dict[tuple[str, str], int] = {}
            for family in ruleset.FAMILIES:
                rules, problem = self._netlink().dump(lambda seq: ruleset.rule_dump(family, seq))
                if problem is not None and not problem.startswith("ENOENT"):
                    result.problem = problem
                    return
                for rule in rules:
                    key = (family, ruleset.rule_chain(rule.attrs))
                    counted[key] = counted.get(key, 0) + 1
            wanted = ruleset.rule_counts(block)
            if any(counted.get(key, 0) != count for key, count in wanted.items()):
                self._restore(result, self.loaded.get(block.name, block))
        return self._timed(work)

    def settle(self, block: Block) -> StepResult:
        """Bulk work after a release: a block no longer configured loses its sets and chains
        (its addresses may have moved to another block, whose gate must not meet them
        here); a gate the release found broken (no lease set) is rebuilt, closed."""
        def work(result: StepResult) -> None:
            if block.name in self._configured:
                self._restore(result, self.loaded[block.name])
                return
            result.problem = self._json(ruleset.remove_block(block.name))
            if result.problem is None:
                del self.loaded[block.name]
                result.detail["removed"] = block.name
        return self._timed(work)

    def remove_leftovers(self) -> StepResult:
        """Delete both tables dpagent, unless this run has prepared them: prepare's first
        transaction already replaced what an earlier run left."""
        def work(result: StepResult) -> None:
            if self._prepared:
                result.detail["skipped"] = "prepared: prepare replaced what an earlier run left"
                return
            rc, output, error = self._nft().json_cmd(ruleset.document([ruleset.LIST_TABLES]))
            if rc != 0:
                result.problem = problem_text(error)
                return
            present = ruleset.our_tables(output)
            result.problem = self._json(ruleset.delete_tables()) if present else None
            result.applied = 0 if result.problem else len(present)
        return self._timed(work)

    def leases(self, names: Sequence[str]) -> dict[str, float | None]:
        """The kernel's view: seconds until each block's lease runs out, None when closed."""
        left: dict[str, float | None] = {}
        for name in names:
            found = []
            for family in ruleset.FAMILIES:
                replies, problem = self._netlink().dump(lambda seq: ruleset.lease_dump(family, name, seq))
                expirations: dict[bytes, float] = {}
                for reply in replies:
                    expirations |= ruleset.lease_expirations(reply.attrs)
                found.append(None if problem else ruleset.lease_left(family, expirations))
            left[name] = None if None in found else min(found)
        return left

    def close(self) -> None:
        self._close_netlink()

    # --- lease work (the event loop) ---------------------------------------------------------

    def _arm(self, names: list[str]) -> str | None:
        """One lease from now for each of these blocks, in one transaction."""
        problem = self._netlink().lease(names, self.lease)
        if problem is None:
            now = time.monotonic()
            self.armed_at.update((name, now) for name in names)
        return problem

    def take(self, block: Block) -> StepResult:
        def work(result: StepResult) -> None:
            self.open.add(block.name)
            if block.name not in self.loaded:
                why = self.problems.get(block.name, "not prepared")
                result.problem = f"block {block.name} has no gate: {why}"
                return
            result.problem = self._arm([block.name])
            result.applied = int(result.problem is None)
        return self._timed(work)

    def release(self, block: Block) -> StepResult:
        """Close the gate now. What is left to do after it, if anything, is `settle`'s."""
        def work(result: StepResult) -> None:
            self.open.discard(block.name)
            self.armed_at.pop(block.name, None)
            if block.name in self.loaded:
                result.problem = self._netlink().lease([block.name], self.lease, close=True)
                result.applied = int(result.problem is None)
        return self._timed(work)

    def unsettled(self, block: Block, released: StepResult) -> bool:
        return block.name in self.loaded and (released.problem is not None or block.name not in self._configured)

    def refresh(self, blocks: Sequence[Block]) -> StepResult:
        """Re-arm the lease of every open block among these, in one transaction. If it is
        rejected, block by block, so that one broken gate never lets the others' leases
        run out; the names of the broken ones are in detail["broken"]."""
        def work(result: StepResult) -> None:
            names = [b.name for b in blocks if b.name in self.open and b.name in self.loaded]
            if not names:
                return
            result.problem = self._arm(names)
            if result.problem is None:
                result.applied = len(names)
                return
            broken = [name for name in names if self._arm([name]) is not None]
            result.applied = len(names) - len(broken)
            result.detail["broken"] = broken
            if not broken:
                result.problem = None
        result = self._timed(work)
        self.refreshes["count"] += 1
        self.refreshes["failed"] += result.problem is not None
        self.refreshes["last_problem"] = result.problem or self.refreshes["last_problem"]
        self.refreshes["last_s"] = result.seconds
        self.refreshes["max_s"] = max(self.refreshes["max_s"], result.seconds)
        return result


class NftStep:
    """The gate as a dataplane step: bulk work in `worker`, lease work on the event loop."""

    facility = "gate"
    verbs = {"take": "open-gate", "release": "close-gate", "adjust": "gate-sets"}

    def __init__(self, worker: Executor, lease: float) -> None:
        self._worker = worker
        self._gate = Gate(lease)
        self._leftovers: dict = {}
        # Rebuilds of broken gates under way, so that every advert does not queue another.
        self._restoring: dict[str, asyncio.Future] = {}

    async def _run(self, func, *args):
        return await asyncio.get_running_loop().run_in_executor(self._worker, func, *args)

    async def prepare(self, blocks: Sequence[Block]) -> None:
        problems = await self._run(self._gate.prepare, tuple(blocks))
        for name, problem in problems.items():
            log.error("gate of block %s not loaded: %s", name, problem)

    async def take(self, block: Block) -> StepResult:
        return self._gate.take(block)

    async def release(self, block: Block) -> StepResult:
        result = self._gate.release(block)
        if self._gate.unsettled(block, result):
            settled = await self._run(self._gate.settle, block)
            # Rebuilt closed or removed, the gate is closed: what a release is for.
            result.problem, result.seconds = settled.problem, result.seconds + settled.seconds
            result.detail |= settled.detail
        return result

    async def adjust(self, old: Block, new: Block) -> StepResult:
        return await self._run(self._gate.adjust, old, new)

    async def repair(self, block: Block) -> StepResult:
        return await self._run(self._gate.repair, block)

    def refresh(self, blocks: Sequence[Block]) -> None:
        """Re-arm the lease of every block held among `blocks`: on the event loop, at every
        advert. A gate found broken is rebuilt in the worker, behind the others' leases."""
        result = self._gate.refresh(blocks)
        if result.problem is None:
            return
        log.error("gate lease refresh failed: %s", result.problem)
        loop = asyncio.get_running_loop()
        for block in blocks:
            if block.name in result.detail.get("broken", ()) and block.name not in self._restoring:
                future = loop.run_in_executor(self._worker, self._gate.restore, block)
                self._restoring[block.name] = future
                future.add_done_callback(lambda done, name=block.name: self._restored(name, done))

    def _restored(self, name: str, done: asyncio.Future) -> None:
        del self._restoring[name]
        result = done.result()
        if result.problem is not None:
            log.error("gate of block %s could not be rebuilt: %s", name, result.problem)

    async def leases(self) -> dict[str, float | None]:
        """Seconds left of each loaded block's lease as the kernel has it (None: closed)."""
        return await self._run(self._gate.leases, tuple(self._gate.loaded))

    async def remove_leftovers(self) -> StepResult:
        result = await self._run(self._gate.remove_leftovers)
        self._leftovers = result.as_dict()
        return result

    def cancel(self, name: str) -> None:
        """Nothing to stop: a lease change is one small transaction."""

    def status(self) -> dict:
        """The gate as this agent last set it; `leases()` asks the kernel."""
        gate = self._gate
        now = time.monotonic()
        armed, opened = gate.armed_at.copy(), set(gate.open)
        return {
            "lease_s": gate.lease,
            "blocks": {name: {"open": name in opened,
                              "expires_in_s": round(max(0.0, armed[name] + gate.lease - now), 3)
                              if name in opened and name in armed else None}
                       for name in sorted(set(gate.loaded) | opened)},
            "problems": gate.problems.copy(),
            "refresh": gate.refreshes.copy(),
            "leftovers_removed": self._leftovers,
        }

    async def close(self) -> None:
        await self._run(self._gate.close)
        self._gate.close()
