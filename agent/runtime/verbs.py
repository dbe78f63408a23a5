"""The control socket's verbs: each checks its arguments and tells the core, never the kernel."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from agent.core.events import AdminCommand, AdminVerb
from agent.core.states import State
from agent.runtime.control import ControlError, Handler
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
