"""The dataplane steps the agent runs with, and removing everything they leave in the kernel.

One list of facilities for the daemon and for `dpagent cleanup`, so a new
facility is cleaned up after a crash as soon as it exists.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor, ThreadPoolExecutor

from agent.config import BgpConfig
from agent.dataplane.addresses import AddressStep
from agent.dataplane.announce import AnnounceStep
from agent.dataplane.cluster import ClusterStep
from agent.dataplane.nft import NftStep
from agent.dataplane.routes import RouteStep
from agent.dataplane.step import DataplaneStep, StepResult
from agent.dataplane.vmac import VmacStep
from agent.dataplane.xdp import XdpStep
from agent.runtime.scheduling import normal_priority


def worker(name: str) -> ThreadPoolExecutor:
    """One thread at normal priority: the loop's SCHED_RR must not be inherited."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=normal_priority)


WORKERS = ("netlink", "announce", "nft", "xdp", "bird")


def build_steps(loop: asyncio.AbstractEventLoop, workers: dict[str, Executor], lease: float,
                bgp: BgpConfig = BgpConfig(), first: tuple[DataplaneStep, ...] = ()) -> tuple[DataplaneStep, ...]:
    """Every facility; core.plan decides their takeover order, this list the order they
    prepare in (a vmac exists before its sender opens; the nft cluster filter lets go of a
    block's multicast MAC before the XDP one takes it). `lease`: how long the gate and the
    XDP filter serve without a refresh (one dead interval); `bgp`: where BIRD is; `first`: the
    facilities only some configurations have (the conntrack replay)."""
    return (*first, NftStep(workers["nft"], lease), ClusterStep(workers["nft"]), XdpStep(workers["xdp"], lease),
            VmacStep(workers["netlink"]), AddressStep(workers["netlink"]),
            RouteStep(loop, workers["netlink"], workers["bird"], bgp), AnnounceStep(loop, workers["announce"]))


async def remove_leftovers(steps: tuple[DataplaneStep, ...]) -> dict:
    """What every facility removed, summed, with each facility's own result beside it."""
    total = StepResult()
    for step in steps:
        result = await step.remove_leftovers()
        total.merge(result)
        total.detail[step.facility] = result.as_dict()
    return total.as_dict()


async def remove_everything() -> dict:
    workers = {name: worker(name) for name in WORKERS}
    # A cleanup opens no lease: any positive value will do.
    steps = build_steps(asyncio.get_running_loop(), workers, lease=1.0)
    try:
        return await remove_leftovers(steps)
    finally:
        for step in steps:
            await step.close()
        for pool in workers.values():
            pool.shutdown(wait=True)
