"""agent.runtime.runner through the dataplane step interface, with fake steps.

The fakes record every call in one shared log, so the tests read the order in
which the runner drove the facilities across blocks.
"""

from __future__ import annotations

import asyncio
from ipaddress import ip_network

import pytest

from agent.config import Block
from agent.dataplane.step import StepResult
from agent.runtime import runner as runner_module
from agent.runtime.runner import StepRunner
from agent.runtime.transitions import History


class FakeStep:
    def __init__(self, facility: str, log: list, verbs: dict | None = None) -> None:
        self.facility = facility
        self.verbs = verbs or {"take": "take", "release": "release", "adjust": "adjust"}
        self.log = log
        self.fail: dict[str, Exception] = {}
        self.gate: asyncio.Event | None = None
        self.missing: dict[str, int] = {}

    async def _call(self, op: str, block: Block) -> StepResult:
        self.log.append((self.facility, op, block.name))
        if self.gate is not None:
            await self.gate.wait()
        if op in self.fail:
            raise self.fail.pop(op)
        return StepResult(applied=block.address_count, detail={"facility": self.facility})

    async def prepare(self, blocks) -> None:
        self.log.append((self.facility, "prepare", tuple(b.name for b in blocks)))

    async def take(self, block: Block) -> StepResult:
        return await self._call("take", block)

    async def release(self, block: Block) -> StepResult:
        return await self._call("release", block)

    async def adjust(self, old: Block, new: Block) -> StepResult:
        self.log.append((self.facility, "adjust-from", old.address_count))
        return await self._call("adjust", new)

    async def repair(self, block: Block) -> StepResult:
        self.log.append((self.facility, "repair", block.name))
        return StepResult(applied=self.missing.pop(block.name, 0))

    async def remove_leftovers(self) -> StepResult:
        return StepResult()

    def refresh(self, blocks) -> None:
        self.log.append((self.facility, "refresh", tuple(b.name for b in blocks)))

    def cancel(self, name: str) -> None:
        self.log.append((self.facility, "cancel", name))

    def status(self) -> dict:
        return {}

    async def close(self) -> None:
        pass


def block(name: str, prefix: str = "198.18.0.0/24") -> Block:
    return Block(name, "eth1", (ip_network(prefix),), ())


def run(coroutine):
    return asyncio.run(coroutine)


def make(log: list) -> tuple[StepRunner, History, FakeStep, FakeStep]:
    history = History()
    addresses = FakeStep("addresses", log)
    announce = FakeStep("announce", log, {"take": "announce", "adjust": "announce", "release": None})
    return StepRunner(asyncio.get_running_loop(), (announce, addresses), history), history, addresses, announce


async def holding_a(log: list) -> tuple[StepRunner, History, FakeStep, FakeStep]:
    """A started runner that has taken block "a"; the log starts empty after it."""
    runner, history, addresses, announce = make(log)
    runner.start()
    runner.take([block("a")], history.begin("BACKUP", "MASTER", "up"))
    assert await runner.drain(5)
    log.clear()
    return runner, history, addresses, announce


def test_every_block_serves_before_any_is_announced_and_each_step_is_timed():
    async def scenario():
        log: list = []
        runner, history, _, _ = make(log)
        runner.start()
        t = history.begin("BACKUP", "MASTER", "test")
        runner.take([block("a")], t)
        runner.take([block("b", "198.18.1.0/24")], t)
        assert await runner.drain(5)
        runner.close()
        return log, t, runner

    log, t, runner = run(scenario())
    assert log == [("addresses", "take", "a"), ("addresses", "take", "b"),
                   ("announce", "take", "a"), ("announce", "take", "b")]
    assert [s.name for s in t.steps] == ["take:a", "take:b", "announce:a", "announce:b"]
    assert all(s.done and s.ok for s in t.steps)
    assert set(runner.held) == {"a", "b"}
    assert runner.last_change["a"]["addresses"]["applied"] == 256


def test_release_cancels_at_once_then_runs_the_plan_backwards_and_forgets_the_block():
    async def scenario():
        log: list = []
        runner, history, _, _ = await holding_a(log)
        down = history.begin("MASTER", "BACKUP", "down")
        runner.release(["a"], down)
        cancelled_first = list(log)
        assert await runner.drain(5)
        runner.close()
        return log, cancelled_first, down, runner

    log, cancelled_first, down, runner = run(scenario())
    assert cancelled_first == [("announce", "cancel", "a"), ("addresses", "cancel", "a")]
    assert log[2:] == [("announce", "release", "a"), ("addresses", "release", "a")]
    # The announce facility's release is its cancel: not a timed step.
    assert [s.name for s in down.steps] == ["release:a"]
    assert runner.held == {}


def test_a_take_stops_when_the_core_changes_its_mind_meanwhile():
    async def scenario():
        log: list = []
        runner, history, addresses, _ = make(log)
        addresses.gate = asyncio.Event()
        runner.start()
        t = history.begin("BACKUP", "MASTER", "up")
        runner.take([block("a")], t)
        await asyncio.sleep(0.01)
        runner.release(["a"], history.begin("MASTER", "BACKUP", "down"))
        addresses.gate.set()
        assert await runner.drain(5)
        runner.close()
        return log, runner

    log, runner = run(scenario())
    assert ("announce", "take", "a") not in log
    assert log[-1] == ("addresses", "release", "a")
    assert runner.held == {}


def test_a_release_that_raised_is_retried_with_back_off_while_not_wanted(monkeypatch):
    monkeypatch.setattr(runner_module, "RETRY_FIRST", 0.01)

    async def scenario():
        log: list = []
        runner, history, addresses, _ = await holding_a(log)
        addresses.fail["release"] = OSError("netlink socket gone")
        runner.release(["a"], history.begin("MASTER", "BACKUP", "down"))
        assert await runner.drain(5)
        assert "a" in runner.held
        for _ in range(200):
            await asyncio.sleep(0.01)
            if "a" not in runner.held:
                break
        runner.close()
        return log, runner, history

    log, runner, history = run(scenario())
    assert runner.held == {}
    assert runner.release_retries == 1
    assert [s["ok"] for t in history.as_list() for s in t["steps"] if s["name"] == "release:a"] == [False, True]
    assert history.as_list()[-1]["reason"] == "retry release of block a"


def test_adjust_changes_a_held_block_in_place_and_skips_one_not_held():
    async def scenario():
        log: list = []
        runner, history, _, _ = await holding_a(log)
        reload = history.begin("MASTER", "MASTER", "reload")
        runner.adjust(block("a", "198.18.0.0/25"), reload)
        runner.adjust(block("other"), reload)
        assert await runner.drain(5)
        runner.close()
        return log, reload, runner

    log, reload, runner = run(scenario())
    assert log == [("addresses", "adjust-from", 256), ("addresses", "adjust", "a"),
                   ("announce", "adjust-from", 256), ("announce", "adjust", "a")]
    assert [s.name for s in reload.steps] == ["adjust:a", "announce:a"]
    assert runner.held["a"].address_count == 128


def test_announce_reruns_only_the_announcing_step_of_a_held_block():
    async def scenario():
        log: list = []
        runner, history, _, _ = await holding_a(log)
        again = history.begin("MASTER", "MASTER", "heal")
        runner.announce(["a", "not-held"], again)
        assert await runner.drain(5)
        runner.close()
        return log, again

    log, again = run(scenario())
    assert log == [("announce", "take", "a")]
    assert [s.name for s in again.steps] == ["announce:a"]


def test_prepare_is_queued_before_the_takes_that_follow_it():
    async def scenario():
        log: list = []
        runner, history, _, _ = make(log)
        runner.start()
        runner.prepare([block("a")], None)
        runner.take([block("a")], history.begin("BACKUP", "MASTER", "up"))
        assert await runner.drain(5)
        runner.close()
        return log

    log = run(scenario())
    assert log[:2] == [("announce", "prepare", ("a",)), ("addresses", "prepare", ("a",))]
    assert log[2] == ("addresses", "take", "a")


@pytest.mark.parametrize("op", ["take", "adjust"])
def test_a_step_that_raises_is_filed_as_failed_and_the_next_block_goes_on(op):
    async def scenario():
        log: list = []
        runner, history, addresses, _ = make(log)
        runner.start()
        t = history.begin("BACKUP", "MASTER", "up")
        if op == "adjust":
            runner.take([block("a"), block("b", "198.18.1.0/24")], t)
            assert await runner.drain(5)
            t = history.begin("MASTER", "MASTER", "reload")
        addresses.fail[op] = RuntimeError("boom")
        if op == "take":
            runner.take([block("a"), block("b", "198.18.1.0/24")], t)
        else:
            runner.adjust(block("a", "198.18.0.0/25"), t)
            runner.adjust(block("b", "198.18.1.0/25"), t)
        assert await runner.drain(5)
        runner.close()
        return t

    t = run(scenario())
    verb = "take" if op == "take" else "adjust"
    failed = [s for s in t.steps if s.name == f"{verb}:a"]
    assert failed and not failed[0].ok and "boom" in failed[0].detail["error"]
    assert any(s.name == f"{verb}:b" and s.ok for s in t.steps)


def test_idle_repair_rounds_put_back_and_count_what_someone_removed(monkeypatch):
    monkeypatch.setattr(runner_module, "REPAIR_EVERY", 0.01)

    async def scenario():
        log: list = []
        runner, history, addresses, _ = await holding_a(log)
        addresses.missing["a"] = 1
        for _ in range(200):
            await asyncio.sleep(0.01)
            if runner.repairs:
                break
        runner.release(["a"], history.begin("MASTER", "BACKUP", "down"))
        assert await runner.drain(5)
        log.clear()
        await asyncio.sleep(0.05)
        runner.close()
        return log, runner

    log, runner = run(scenario())
    assert runner.repairs == {"a": 1}
    # Nothing held any more: the rounds that follow repair nothing.
    assert not [entry for entry in log if entry[1] == "repair"]


def test_refresh_re_arms_the_leases_of_blocks_held_and_wanted_only():
    async def scenario():
        log: list = []
        runner, history, _, _ = await holding_a(log)
        runner.refresh()
        refreshed = list(log)
        log.clear()
        runner.release(["a"], history.begin("MASTER", "BACKUP", "down"))
        runner.refresh()
        assert await runner.drain(5)
        runner.refresh()
        runner.close()
        return refreshed, log

    refreshed, after = run(scenario())
    assert refreshed == [("announce", "refresh", ("a",)), ("addresses", "refresh", ("a",))]
    assert not [entry for entry in after if entry[1] == "refresh"]
