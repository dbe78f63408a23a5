"""agent.dataplane.routes.RouteStep: when BIRD is asked, and that a BIRD that hangs holds nothing up."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from ipaddress import ip_address, ip_network

import pytest

from agent.config import AnnounceConfig, Block
from agent.dataplane import routes
from agent.dataplane.step import StepResult

ROUTED = Block("ext", "eth1", (ip_network("198.18.0.0/16"), ip_network("2001:db8:1::/116")),
               (ip_address("203.0.113.9"),), AnnounceConfig(via="bgp"))
L2_ONLY = Block("gw", "eth2", (), (ip_address("192.0.2.254"),))


class FakePlane:
    def take(self, block: Block) -> StepResult:
        return StepResult(applied=len(routes.companion_routes(block.prefixes, block.addresses)))

    release = take

    def close(self) -> None:
        pass


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[threading.Event]:
    """Each BIRD check waits for its own event: a test decides when BIRD answers."""
    gates: list[threading.Event] = []

    def check(path, wanted):
        gate = threading.Event()
        gates.append(gate)
        gate.wait(5)
        return {"running": False, "problem": f"no control socket at {path}", "protocols": {}, "version": None}

    monkeypatch.setattr(routes.bird, "check", check)
    monkeypatch.setattr(routes, "RoutePlane", FakePlane)
    monkeypatch.setattr(routes, "CHECK_AFTER_CHANGE", 0.01)
    return gates


def test_companion_routes_are_the_prefixes_and_each_loose_address():
    assert [str(r) for r in routes.companion_routes(ROUTED.prefixes, ROUTED.addresses)] == [
        "198.18.0.0/16", "2001:db8:1::/116", "203.0.113.9/32"]


def test_a_hung_bird_holds_up_neither_prepare_nor_a_take(checks):
    async def scenario() -> None:
        with ThreadPoolExecutor(1) as netlink, ThreadPoolExecutor(1) as checker:
            step = routes.RouteStep(asyncio.get_running_loop(), netlink, checker)
            await asyncio.wait_for(step.prepare([ROUTED, L2_ONLY]), 1)
            result = await asyncio.wait_for(step.take(ROUTED), 1)
            assert result.applied == 3 and step.status()["announced"] == {"ext": 3}
            assert step.status()["bird"] is None  # still asking
            checks[0].set()
            while step.status()["bird"] is None:
                await asyncio.sleep(0.01)
            # The take asked again while the first check ran: a second one follows it.
            while len(checks) < 2:
                await asyncio.sleep(0.01)
            checks[1].set()
            await step.close()

    asyncio.run(scenario())


def test_no_bgp_block_no_check(checks):
    async def scenario() -> None:
        with ThreadPoolExecutor(1) as netlink, ThreadPoolExecutor(1) as checker:
            step = routes.RouteStep(asyncio.get_running_loop(), netlink, checker)
            await step.prepare([L2_ONLY])
            await asyncio.sleep(0.05)
            assert checks == [] and step.status()["bird"] is None
            await step.close()

    asyncio.run(scenario())
