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

    def failover(_args: dict) -> dict:
        if pump.node.state is not State.MASTER:
            raise ControlError(f"not master (state {pump.node.state.name}); nothing to hand over")
        admin(AdminVerb.FAILOVER)
        return {"message": "resigned; the best backup takes over"}

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
