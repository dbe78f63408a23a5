"""The control socket's verbs: each checks its arguments and tells the core, never the kernel."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from agent.core.events import AdminCommand, AdminVerb
from agent.core.states import State
from agent.dataplane.ctreplay import ConntrackStep
from agent.runtime.control import ControlError, Handler
from agent.runtime.ctsync import ConntrackSync
from agent.runtime.pump import CorePump


def handlers(pump: CorePump, status: Callable[[], dict], metrics: Callable[[dict], str],
             reload: Callable[[], Awaitable[str | None]]) -> dict[str, Handler]:
    def admin(verb: AdminVerb) -> None:
        pump.events([AdminCommand(verb)])

    def failover(args: dict) -> dict:
        node = pump.node
        if node.state is not State.MASTER:
            raise ControlError(f"not master (state {node.state.name}); nothing to hand over")
        peers = node.snapshot(pump.loop.time())["peers"]
        ready = [p["node_id"] for p in peers if p["alive"] and p["state"] == "BACKUP" and not p["yielding"]]
        # Without a live backup the blocks would go dark for a dead interval, then come back here.
        if not ready and args.get("force") is not True:
            raise ControlError("no live backup to hand over to; use --force to resign anyway")
        admin(AdminVerb.FAILOVER)
        to = f"backup(s) {', '.join(map(str, ready))}" if ready else "no live backup (forced)"
        return {"message": f"resigned; the best backup takes over ({to})"}

    def maintenance(args: dict) -> dict:
        mode = args.get("mode")
        if mode not in ("on", "off"):
            raise ControlError("args.mode must be 'on' or 'off'")
        admin(AdminVerb.MAINTENANCE_ON if mode == "on" else AdminVerb.MAINTENANCE_OFF)
        return {"message": f"maintenance {mode}; state {pump.node.state.name}"}

    async def reload_verb(_args: dict) -> dict:
        problem = await reload()
        if problem:
            raise ControlError(problem)
        return {"message": "configuration reloaded"}

    return {
        "status": lambda _args: status(),
        "metrics": lambda _args: {"text": metrics(status())},
        "failover": failover,
        "maintenance": maintenance,
        "reload": reload_verb,
    }


def conntrack_handlers(sync: ConntrackSync, step: ConntrackStep) -> dict[str, Handler]:
    """`agentctl conntrack ACTION`, with conntrackd's verbs."""

    async def conntrack(args: dict) -> dict:
        action = args.get("action")
        if action == "stats":
            return {**sync.stats(), **step.status()}
        if action == "resync":
            return {"message": f"asked {sync.request_resync()} peer(s) for their full table"}
        if action == "bulk-send":
            return {"message": f"sending our full table to {sync.bulk_send()} peer(s)"}
        if action in ("commit", "flush") and sync.cache is None:
            raise ControlError(f"hot standby keeps no cache: every change is in the kernel already ({action})")
        if action == "flush":
            count = len(sync.cache)
            sync.cache.clear()
            return {"message": f"flushed {count} cached entries"}
        if action == "commit":
            result = await sync.run(step.replay)
            return {"message": f"committed {result.applied} entries", **result.as_dict()}
        raise ControlError("args.action must be one of stats, commit, flush, resync, bulk-send")

    return {"conntrack": conntrack}
