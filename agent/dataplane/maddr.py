"""A cluster MAC in its interface's multicast filter, what `ip maddr add` does.

A real NIC drops multicast it was not told about (veth does not care), so
both cluster filters, nft and XDP, put their block's MAC here. The kernel
keeps one such entry per address however often it is added, so an entry is
removed only when no configured cluster-mac block of the interface still
uses the MAC: a block switching backends is unloaded by one step and loaded
by the other, in either order.
"""

from __future__ import annotations

import fcntl
import socket
import struct
from collections.abc import Iterable

from agent.config import Block

SIOCADDMULTI, SIOCDELMULTI = 0x8931, 0x8932
IFREQ_SIZE = 40


def change(interface: str, mac: str, add: bool) -> str | None:
    """Add the MAC to (or remove it from) the interface's multicast filter; None, or why not."""
    request = interface.encode().ljust(16, b"\0") + struct.pack("=H", socket.AF_UNSPEC) + bytes.fromhex(
        mac.replace(":", ""))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock, SIOCADDMULTI if add else SIOCDELMULTI, request.ljust(IFREQ_SIZE, b"\0"))
        except OSError as exc:
            return f"{'adding' if add else 'removing'} multicast MAC {mac} on {interface}: {exc.strerror}"
    return None


def release(block: Block, configured: Iterable[Block]) -> str | None:
    """Remove the block's MAC unless another configured cluster-mac block uses it there."""
    if any(b.name != block.name and b.l2.mode == "cluster-mac" and b.interface == block.interface
           and b.l2.cluster_mac == block.l2.cluster_mac for b in configured):
        return None
    return change(block.interface, block.l2.cluster_mac, add=False)


def listed(interface: str, mac: str) -> bool:
    """Whether /proc/net/dev_mcast lists the MAC on the interface."""
    wanted = mac.replace(":", "").lower()
    with open("/proc/net/dev_mcast") as listing:
        return any(f.split()[1:2] == [interface] and f.split()[4:5] == [wanted] for f in listing)
