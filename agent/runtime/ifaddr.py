"""Which local address a heartbeat link binds: read from the kernel, never guessed.

A peers link binds the interface's first address (of the peers' family) whose
on-link prefix holds a peer, in the order the peers are listed (heartbeat.py says
why); a multicast link binds its group.
"""

from __future__ import annotations

import os
import socket
from ipaddress import ip_address, ip_network

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from pyroute2.netlink.rtnl import RTM_GETADDR, RTM_NEWADDR
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_DADFAILED, IFA_F_TENTATIVE, ifaddrmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from agent.config import HeartbeatLink
from agent.core.packing import IPAddress, IPNetwork

NETLINK_ROUTE = 0
# Not bindable (yet, or ever): the kernel refuses them with EADDRNOTAVAIL.
_UNUSABLE = IFA_F_TENTATIVE | IFA_F_DADFAILED


def _dump_request(index: int, family: int) -> bytes:
    request = ifaddrmsg()
    request["family"], request["index"] = family, index
    request["header"].update(type=RTM_GETADDR, flags=NLM_F_REQUEST | NLM_F_DUMP, sequence_number=1)
    request.encode()
    return bytes(request.data)


def interface_addresses(index: int, family: int) -> list[tuple[IPAddress, IPNetwork]]:
    """The bindable addresses of `family` on interface `index`, each with its on-link prefix.

    One raw rtnetlink dump, which the kernel answers at once, so it may run on the
    event loop; pyroute2's IPRoute may not (it runs an event loop of its own)."""
    found = []
    marshal = MarshalRtnl()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) as nl:
        nl.settimeout(1.0)
        nl.sendto(_dump_request(index, family), (0, 0))
        while True:
            for msg in marshal.parse(nl.recv(1 << 16)):
                kind = msg["header"]["type"]
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR and msg["header"]["error"] is not None:
                    code = msg["header"]["error"].code
                    raise OSError(code, os.strerror(code))
                if (kind != RTM_NEWADDR or msg["family"] != family or msg["index"] != index
                        or msg.get("IFA_FLAGS", msg["flags"]) & _UNUSABLE):
                    continue
                # On a point-to-point address IFA_ADDRESS is the far end and IFA_LOCAL our own.
                far = msg.get("IFA_ADDRESS")
                found.append((ip_address(msg.get("IFA_LOCAL") or far),
                              ip_network(f"{far}/{msg['prefixlen']}", strict=False)))


def local_address(peers: tuple[IPAddress, ...], addresses: list[tuple[IPAddress, IPNetwork]]) -> IPAddress | None:
    """The address of ours that the peers send to: the first one whose prefix holds a peer (see the module)."""
    for peer in peers:
        for local, network in addresses:
            if peer in network:
                return local
    return None


def bind_address(link: HeartbeatLink, family: socket.AddressFamily, index: int) -> IPAddress:
    if link.group is not None:
        return link.group
    local = local_address(link.peers, interface_addresses(index, family))
    if local is None:
        version = 6 if family == socket.AF_INET6 else 4
        raise OSError(f"no IPv{version} address on {link.interface} in the prefix of a peer")
    return local
