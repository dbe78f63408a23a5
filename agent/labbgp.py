"""The lab with an upstream router that learns the block over BGP, each node and the router with its own BIRD.

    remote --- router ==[ext bridge]== fw1, fw2   (the rest as agent.lab.Lab)

The router (AS 65000) has eBGP sessions with fw1 and fw2 (both AS 65001) over
the external segment, with BFD so that a dead node's session goes in
BFD_INTERVAL_MS x BFD_MULTIPLIER, and installs what it learns in its kernel,
merging equal paths (ECMP). The remote client reaches the block only through
the router: nothing on its side is on-link. Each BIRD has its own
configuration, control socket and log in the lab's directory, runs in the
foreground (`bird -f`, so its PID is the one the lab started) and is killed by
PID with the lab. BIRD runs SCHED_RR (BIRD_PRIORITY, below the probe's and the
agents' loops): at normal priority, on two shared CPUs, a burst of 256 route
changes starved its BFD past 60 ms in 2 of 40 benchmark runs and took both
sessions down, as a router's BFD in hardware would not.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from pathlib import Path

from agent.core import bird
from agent.dataplane.bird import BirdUnreachable, ask
from agent.dataplane.routes import ROUTE_TABLE
from agent.lab import BLOCK_V4, Lab

ROUTER_EXT = "203.0.113.254"
REMOTE_NET = "192.0.2.128/26"
REMOTE = "192.0.2.130"
REMOTE_GW = "192.0.2.129"
ROUTER_AS, NODES_AS = 65000, 65001
BFD_INTERVAL_MS, BFD_MULTIPLIER = 20, 3
BIRD = "/usr/sbin/bird"
BIRD_PRIORITY = 5

_TIMERS = """\
  connect delay time 1;
  connect retry time 1;
  error wait time 1, 2;
  hold time 30;
  bfd on;"""

_BFD = f"""protocol bfd {{
  interface "ext0" {{ interval {BFD_INTERVAL_MS} ms; multiplier {BFD_MULTIPLIER}; }};
}}"""


def node_bird_config(router_id: str, log: Path) -> str:
    """A node's BIRD: the fragment of packaging/bird-dpagent.conf, and one session to the router."""
    return f"""\
router id {router_id};
log "{log}" all;
debug protocols {{ states }};
protocol device {{}}
protocol kernel dpagent4 {{
  ipv4 {{ import where krt_source = 199; export none; }};
  kernel table {ROUTE_TABLE};
  learn;
}}
protocol kernel dpagent6 {{
  ipv6 {{ import where krt_source = 199; export none; }};
  kernel table {ROUTE_TABLE};
  learn;
}}
{_BFD}
protocol bgp upstream {{
  local {router_id} as {NODES_AS};
  neighbor {ROUTER_EXT} as {ROUTER_AS};
{_TIMERS}
  ipv4 {{ import none; export where proto = "dpagent4"; }};
}}
"""


def router_bird_config(nodes: dict[int, str], log: Path) -> str:
    sessions = "\n".join(f"""protocol bgp fw{n} {{
  local {ROUTER_EXT} as {ROUTER_AS};
  neighbor {address} as {NODES_AS};
{_TIMERS}
  ipv4 {{ import all; export none; }};
}}""" for n, address in nodes.items())
    return f"""\
router id {ROUTER_EXT};
log "{log}" all;
debug protocols {{ states }};
protocol device {{}}
protocol kernel {{
  ipv4 {{ import none; export all; }};
  merge paths on;
}}
{_BFD}
{sessions}
"""


class BgpLab(Lab):
    """Lab plus `router` and `remote` namespaces and a BIRD per node and router."""

    def __init__(self, prefix: str | None = None, heartbeat: str = "switched") -> None:
        super().__init__(prefix, heartbeat)
        self.birds: dict[str, subprocess.Popen] = {}

    def build(self) -> None:
        super().build()
        for role in ("router", "remote"):
            self._names[role] = self.netns.new(role)
        self.netns.veth(self.ns("router"), "ext0", self.ns("seg"), "rt-ext", up=False)
        self._batch("seg", ["link set rt-ext master br-ext up"])
        self.netns.veth(self.ns("remote"), "up0", self.ns("router"), "down0", up=False)
        self._batch("router", [f"addr add {ROUTER_EXT}/24 dev ext0", f"addr add {REMOTE_GW}/26 dev down0",
                               "link set ext0 up", "link set down0 up"])
        self._sysctl("router", "net.ipv4.ip_forward=1")
        self._batch("remote", [f"addr add {REMOTE}/26 dev up0", "link set up0 up",
                               f"route add default via {REMOTE_GW}"])
        for node in self.addresses:
            self._batch(f"fw{node}", [f"route add {REMOTE_NET} via {ROUTER_EXT} dev ext0"])

    def write_config(self, node: int, *, via: str = "bgp", **options) -> Path:
        """Lab.write_config with the block announced `via` and [bgp] pointing at fw<node>'s BIRD."""
        announce = f'[block.announce]\nvia = "{via}"\n' + options.pop("announce", "")
        path = super().write_config(node, announce=announce, **options)
        with path.open("a") as config:
            config.write(f'\n[bgp]\nbird_socket = "{self.bird_socket(f"fw{node}")}"\n')
        return path

    # --- BIRD -----------------------------------------------------------------------------

    def bird_socket(self, role: str) -> Path:
        return self.dir / f"{role}-bird.ctl"

    def start_bird(self, role: str) -> subprocess.Popen:
        """This namespace's BIRD, in the foreground; its configuration, socket and log in the lab's directory."""
        log = self.dir / f"{role}-bird.log"
        if role == "router":
            text = router_bird_config({n: a.ext for n, a in self.addresses.items()}, log)
        else:
            text = node_bird_config(self.addresses[int(role.removeprefix("fw"))].ext, log)
        config = self.dir / f"{role}-bird.conf"
        config.write_text(text)
        # chrt execs BIRD: the PID started is BIRD's.
        proc = self.spawn(role, ["chrt", "-r", str(BIRD_PRIORITY), BIRD, "-f", "-c", str(config),
                                 "-s", str(self.bird_socket(role)), "-P", str(self.dir / f"{role}-bird.pid")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.birds[role] = proc
        return proc

    def kill_bird(self, role: str) -> None:
        proc = self.birds.pop(role)
        self.netns.kill(proc)

    def birdc(self, role: str, command: str) -> list[tuple[int, str]]:
        return ask(self.bird_socket(role), command)[1]

    def wait_sessions(self, timeout: float = 60.0) -> None:
        """Until the router has every node's session Established (BFD up with it)."""
        deadline = time.monotonic() + timeout
        wanted = {f"fw{n}" for n in self.addresses}
        while time.monotonic() < deadline:
            try:
                found = bird.protocols(self.birdc("router", "show protocols"))
            except BirdUnreachable:
                found = {}
            if all(name in found and found[name].info == "Established" for name in wanted):
                return
            time.sleep(0.05)
        raise TimeoutError(f"BGP sessions not all Established within {timeout} s")

    def start_all_birds(self) -> None:
        for role in ("router", *(f"fw{n}" for n in self.addresses)):
            self.start_bird(role)
        self.wait_sessions()

    # --- what the router sees ---------------------------------------------------------------

    def next_hops(self, prefix: str = BLOCK_V4) -> set[str]:
        """The router's kernel next hops for `prefix` (ECMP: several)."""
        return self.routes_via([prefix]).get(prefix, set())

    def routes_via(self, prefixes: list[str]) -> dict[str, set[str]]:
        """prefix -> the router's kernel next hops, for those of `prefixes` it has a route to."""
        out = self.exec("router", ["ip", "-j", "route", "show", "table", "main"]).stdout
        wanted = {str(ipaddress.ip_network(p)): p for p in prefixes}
        found: dict[str, set[str]] = {}
        for route in json.loads(out or "[]"):
            dst = route.get("dst", "")
            name = wanted.get(dst if "/" in dst else f"{dst}/32")
            if name is None:
                continue
            hops = {route["gateway"]} if route.get("gateway") else set()
            hops.update(h["gateway"] for h in route.get("nexthops", []) if h.get("gateway"))
            found[name] = hops
        return found

    def node_of(self, address: str) -> int | None:
        return next((n for n, a in self.addresses.items() if a.ext == address), None)

    def ping_block(self, address: str | None = None, count: int = 3) -> bool:
        """Echo requests from the remote client to a block address, through the router."""
        target = address or str(ipaddress.ip_network(BLOCK_V4).network_address + 1)
        done = self.exec("remote", ["ping", "-c", str(count), "-i", "0.2", "-W", "1", target], check=False)
        return done.returncode == 0
