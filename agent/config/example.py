"""The example configuration, packaging/dpagent.toml, written from the schema's help.

Run `python -m agent.config.example > packaging/dpagent.toml` after changing the
schema; a test checks that the committed file is what this writes, so a key's
range, default and help are edited in the schema and nowhere else.
"""

from __future__ import annotations

import textwrap
from typing import NamedTuple

from agent.config.messages import number, toml
from agent.config.schema import (
    INTEGER, NUMBER, NUMBER_OR_OFF, REQUIRED, STRING, STRINGS, TABLE, TABLES, TABLES_BY_PATH, Key, describe,
)

WIDTH = 80

HEADER = """\
dpagent example configuration: /etc/dpagent/dpagent.toml

Check it with `dpagent check [CONFIG]`: every error is printed as `FILE: key =
value: message` and the exit status is 2. The daemon refuses to start on a
configuration that fails the same checks. Unknown keys are errors. Relative
paths are relative to the directory of this file. This file is written by
`python -m agent.config.example` from the schema (agent/config/schema.py)."""


class Section(NamedTuple):
    """One table of the example: its schema path, its values, and for a table shown
    a second time, what this one is for and a short note per key instead of the help."""

    path: str
    values: dict
    caption: str = ""
    notes: dict = {}


SECTIONS = (
    Section("node", {"id": 1, "priority": 150, "preempt": True, "preempt_delay": 30, "advert_interval": 0.05,
                     "dead_multiplier": 3, "dead_interval_max": 1.0, "false_takeover_every": 86400,
                     "realtime_priority": 10, "state_dir": "/var/lib/dpagent"}),
    Section("auth", {"key_file": "/etc/dpagent/key"}),
    Section("control", {"socket": "/run/dpagent/control.sock"}),
    Section("metrics", {"listen": "127.0.0.1:9412"}),
    Section("conntrack", {"interface": "eth2", "peers": ["192.0.2.2"], "port": 7789, "mode": "cache",
                          "ignore": ["192.0.2.0/29"], "protocols": ["tcp", "udp", "icmp", "icmpv6"],
                          "event_buffer": 64 << 20, "expected_entries": 1_000_000, "window_tracking": False,
                          "max_datagram": 1452}),
    Section("bgp", {"bird_socket": "/run/bird/bird.ctl", "protocols": ["dpagent4", "dpagent6"]}),
    Section("heartbeat", {"interface": "eth0", "group": "224.0.0.18", "port": 7788}),
    Section("heartbeat", {"interface": "eth2", "peers": ["192.0.2.2"], "port": 7788},
            caption="A directly connected link (the old conntrackd sync link, say).",
            notes={"interface": "Interface of that link.", "port": "UDP port, as above."}),
    Section("block", {"name": "external", "interface": "eth1", "prefixes": ["198.18.0.0/16", "2001:db8:0:1::/120"],
                      "addresses": ["203.0.113.10", "2001:db8::10"],
                      "address_files": ["/etc/dpagent/eth1.addr.external"], "mode": "active-passive",
                      "weight": 1.0}),
    Section("block.announce", {"via": "l2", "pps": 0, "rounds": 2, "round_delay": 2.0, "refresh": 0, "arp_mode": "request"}),
    Section("block.l2", {"mode": "cluster-mac", "cluster_mac": "01:00:5e:00:01:01", "buckets": 256,
                         "hash": "sourceip", "hash_seed": 0x5EED, "backend": "xdp"}),
    Section("block", {"name": "internal-gw", "interface": "eth2", "addresses": ["192.0.2.254"]},
            caption="A second block: the internal gateway address that ucarp used to carry. "
                    "[block.announce] is left out, so every announce setting takes its default.",
            notes={"name": "Its name.", "interface": "The internal interface.", "addresses": "A single address."}),
    Section("block.l2", {"mode": "vmac", "vrid": 51},
            caption="Its gateway address moves as VRRP's virtual MAC 00:00:5e:00:01:33, as keepalived's use_vmac.",
            notes={"mode": "Mode vmac."}),
)


def render() -> str:
    """The whole example file."""
    parts = [comment(HEADER)]
    shown: set[str] = set()
    for section in SECTIONS:
        parent, _, name = section.path.rpartition(".")
        table_key = _key(parent, name)
        intro = section.caption if section.path in shown else documentation(table_key)
        header = f"[[{section.path}]]" if table_key.type == TABLES else f"[{section.path}]"
        lines = [comment(intro), header]
        for key, value in section.values.items():
            note = section.notes.get(key) if section.path in shown else None
            lines += [comment(note or documentation(_key(section.path, key))), f"{key} = {toml(value)}"]
        shown.add(section.path)
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def documentation(k: Key) -> str:
    """A key's help, then its range and default as the schema gives them."""
    facts = []
    if k.type in (INTEGER, NUMBER, NUMBER_OR_OFF) or (k.type == STRING and k.range):
        facts.append(f"{_sentence(describe(k))}.")
    if k.default is REQUIRED:
        facts.append("Required.")
    elif isinstance(k.default, float):
        facts.append(f"Default {number(k.default)}.")
    elif k.default is not None and k.type not in (STRINGS, TABLE, TABLES):
        facts.append(f"Default {toml(k.default)}.")
    if not facts:
        return k.help
    # After a help that ends in a command line, the facts go on a line of their own.
    return k.help + ("\n" if "\n" in k.help else " ") + " ".join(facts)


def comment(text: str) -> str:
    """`# ` lines wrapped to WIDTH; a line that starts with spaces (a command) is kept as it is."""
    lines = []
    for paragraph in text.split("\n"):
        if paragraph.startswith(" ") or not paragraph:
            lines.append(paragraph)
        else:
            lines += textwrap.wrap(paragraph, WIDTH - 2, break_on_hyphens=False)
    return "\n".join(f"# {line}".rstrip() for line in lines)


def _key(table: str, name: str) -> Key:
    return next(k for k in TABLES_BY_PATH[table] if k.name == name)


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


if __name__ == "__main__":
    print(render(), end="")
