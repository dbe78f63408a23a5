"""The status document: what `agentctl status`, `--json` and the metrics are all rendered from."""

from __future__ import annotations

from agent.config import Block


def block_status(block: Block, held: Block | None, last_change: dict | None) -> dict:
    return {
        "name": block.name,
        "interface": block.interface,
        "addresses": block.address_count,
        "prefixes": [str(p) for p in block.prefixes],
        "held": held is not None,
        "mode": block.mode,
        "via": block.announce.via,
        "l2": {"mode": block.l2.mode, "mac": block.l2.mac,
               **({"backend": block.l2.backend, "buckets": block.l2.buckets, "hash": block.l2.hash,
                   "hash_seed": block.l2.hash_seed} if block.l2.mode == "cluster-mac" else {"backend": None})},
        # The latest result of each facility's step for this block.
        "last_change": last_change or {},
    }


def link_status(name: str, port_open: bool, kernel: str, send_errors: int, last_error: str,
                drops: dict[str, int]) -> dict:
    """A heartbeat link: its socket, the kernel's view, and the frames its socket refused."""
    return {"name": name, "up": port_open, "kernel": kernel, "send_errors": send_errors, "last_error": last_error,
            "drops": drops}
