"""What the election must hear when an interface it depends on changes state.

Carrier loss on a heartbeat link is what a dead peer at the other end of a
direct cable looks like, so it is not a local fault: only a heartbeat link that
is down here (administratively, gone, or without a working socket) counts
against this node, and the carrier loss itself is news about the peers.
"""

from __future__ import annotations

from agent.core.events import CarrierLost, Event, LinkChanged, LinkRole

# The link monitor's reasons, as the kernel's flags give them.
UP = "up"
NO_CARRIER = "no carrier"
ADMIN_DOWN = "administratively down"
MISSING = "interface missing"
REMOVED = "interface removed"


def heartbeat_usable(up: bool, reason: str) -> bool:
    """Whether a heartbeat socket belongs on the link: frames may come back with the carrier."""
    return up or reason == NO_CARRIER


def link_events(name: str, up: bool, reason: str, *, heartbeat: bool, block: bool,
                socket_problem: str = "") -> list[Event]:
    """`socket_problem`: why the heartbeat socket is not open on a usable link (say,
    someone else holds the port): a link nothing can be heard on is down here."""
    events: list[Event] = []
    if heartbeat:
        if socket_problem and heartbeat_usable(up, reason):
            events.append(LinkChanged(name, LinkRole.HEARTBEAT, False, f"socket: {socket_problem}"))
        else:
            events.append(LinkChanged(name, LinkRole.HEARTBEAT, heartbeat_usable(up, reason), reason))
        if reason == NO_CARRIER:
            events.append(CarrierLost(name))
    if block:
        events.append(LinkChanged(name, LinkRole.BLOCK, up, reason))
    return events
