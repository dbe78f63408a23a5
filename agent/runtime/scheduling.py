"""Real-time priority for the event-loop thread only, like keepalived's vrrp_rt_priority.

On a loaded machine a normal-priority loop can be kept off the CPU for longer
than the peer's dead interval while a takeover keeps the kernel busy (IPv6
address adds measured 100+ ms advert gaps here): the adverts must win. Linux
threads inherit the policy of the thread that creates them, so every worker
pool resets its threads to SCHED_OTHER as they start.
"""

from __future__ import annotations

import os


def raise_loop_priority(priority: int) -> str:
    """Put the calling thread under SCHED_RR; returns what happened, for status."""
    if priority <= 0:
        return "off (realtime_priority = 0)"
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))
    except OSError as exc:
        return f"off ({exc.strerror}; needs CAP_SYS_NICE)"
    return f"SCHED_RR {priority}"


def normal_priority() -> None:
    """ThreadPoolExecutor initializer: worker threads must not inherit SCHED_RR."""
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
