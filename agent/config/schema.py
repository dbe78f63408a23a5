"""The configuration schema: every key's type, range, default and help, once.

The parser validates from these tables, the model takes its defaults from them
and the example configuration (packaging/dpagent.toml, written by
`python -m agent.config.example`) takes its comments from them, so the three
cannot drift apart. Every limit of the configuration is named here, with the
reason for it; the election's ranges come from agent.core.limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from agent.config.messages import number, toml
from agent.core import limits

DEFAULT_PATH = Path("/etc/dpagent/dpagent.toml")

# --- limits ------------------------------------------------------------------------

# The key file: the current key and the next one, during a rotation.
MAX_KEYS = 2
# A key id is one byte on the wire; 0 is not used.
KEY_ID = (1, 255)
# 128 bits, the least a key for the frames' MAC should have.
MIN_SECRET_BYTES = 16
# sizeof(sockaddr_un.sun_path) minus the terminating NUL.
SUN_PATH_MAX = 107
# The kernel's IFNAMSIZ, NUL included.
IFNAMSIZ = 16
# Block names appear in metrics labels and agentctl's columns.
BLOCK_NAME_MAX = 32
# An IPv4 prefix becomes one AnyIP route, but every member is announced by GARP:
# a /8 is 16.7 million frames a round.
MIN_V4_PREFIXLEN = 8
# Every IPv6 address becomes one interface address (neighbour discovery answers
# nothing else), and the kernel adds them one at a time at a cost that grows
# with their number: 4,096 took 4.2 s here, the next 4,096 8.9 s, 16 x /116
# minutes. These bound a takeover's length; one prefix may fill its block.
MAX_V6_BLOCK_ADDRESSES = 1 << 12
MAX_V6_ADDRESSES = 1 << 14
MIN_V6_PREFIXLEN = 128 - (MAX_V6_BLOCK_ADDRESSES.bit_length() - 1)  # /116
# Every file the configuration names is read whole into memory, with a bounded
# read so that a wrong path (a disk image, a log) costs no more than this.
# 16 MiB holds a million IPv4 addresses one per line, which is the next cap.
MAX_FILE_BYTES = 16 << 20
# Single addresses (inline and from address files) cost ~350 bytes each while
# loading and 4 s a million; larger sets belong in prefixes (one route each).
MAX_LOOSE_ADDRESSES = 1 << 20

# --- types -------------------------------------------------------------------------

INTEGER = "integer"
NUMBER = "number"
NUMBER_OR_OFF = "number or 0"
BOOLEAN = "boolean"
STRING = "string"  # range: None, or the tuple of allowed values
PATH = "path"  # relative to the configuration file's directory
INTERFACE = "interface"
NAME = "name"
STRINGS = "strings"
TABLE = "table"
TABLES = "tables"


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()
"""The default of a key that must be given."""


class Key(NamedTuple):
    name: str
    type: str
    range: tuple | None
    default: object  # REQUIRED, None (optional, no value) or the value taken when absent
    help: str


# --- the tables ---------------------------------------------------------------------

_TOP = (
    Key("node", TABLE, None, None, "This node: its identity and its part in the election."),
    Key("auth", TABLE, None, None, "The keys that authenticate heartbeat and sync frames."),
    Key("control", TABLE, None, None, "The local control socket."),
    Key("metrics", TABLE, None, None, "Prometheus metrics over HTTP; off unless `listen` is given."),
    Key("conntrack", TABLE, None, None,
        "Connection-tracking sync, conntrackd's job: every node sends the changes of its "
        "kernel's table to its peers, and a takeover puts the peer's entries into the "
        "kernel before the block opens, so established connections and NAT mappings "
        "survive a failover. Off unless the table is given."),
    Key("bgp", TABLE, None, None,
        "BIRD 2, for blocks announced over BGP ([block.announce] via). The agent never speaks BGP "
        "and never writes BIRD's configuration: it puts a companion route per prefix in kernel "
        "table 199 (protocol 199), which BIRD's kernel protocols learn and its BGP sessions export "
        "(packaging/bird-dpagent.conf), and checks at start-up that BIRD runs with those protocols."),
    Key("heartbeat", TABLES, None, None,
        "One [[heartbeat]] table per link the adverts are sent on; at least one, and at "
        "most one per interface. Two independent links make a split brain less likely."),
    Key("block", TABLES, None, None,
        "One [[block]] table per address block. A block moves between nodes as a whole. "
        "Its addresses may be given as prefixes, inline addresses and classic address "
        "files, in any mix; duplicates and addresses inside the block's own prefixes are "
        "folded. An address or prefix claimed by two blocks is an error. Every IPv6 "
        f"address is configured on the interface one by one: at most {MAX_V6_BLOCK_ADDRESSES:,} "
        f"per block and {MAX_V6_ADDRESSES:,} in all blocks, so that a takeover stays short."),
)

_NODE = (
    Key("id", INTEGER, limits.NODE_ID, REQUIRED, "This node's id, unique in the cluster."),
    Key("priority", INTEGER, limits.PRIORITY, 100,
        "Election priority; the live node with the highest priority is master (ucarp's "
        "advskew, inverted)."),
    Key("preempt", BOOLEAN, None, True,
        "Whether a node of higher priority takes over from a live master of lower "
        "priority when it comes back."),
    Key("preempt_delay", NUMBER, limits.PREEMPT_DELAY, 0.0,
        "Seconds a returning higher-priority node waits before it preempts, so that a "
        "flapping node does not move the blocks back and forth."),
    Key("advert_interval", NUMBER, limits.ADVERT_INTERVAL, 0.05, "Seconds between two heartbeat adverts."),
    Key("dead_multiplier", INTEGER, limits.DEAD_MULTIPLIER, 3,
        "Missed adverts after which the peer is declared dead (plus a quarter interval, "
        "so that the last one arriving on time is never a coin toss): with the default "
        "interval and multiplier a failover starts 162.5 ms after the master's last advert."),
    Key("dead_interval_max", NUMBER, limits.DEAD_INTERVAL_MAX, 1.0,
        "Seconds: the longest dead interval loss-tolerant detection may use. Each node "
        "measures the loss of every peer's adverts from their sequence numbers and waits "
        "longer for a lossy peer, so that lost adverts alone almost never start a "
        "takeover (keepalived and ucarp flap every ~2 s at 30 % loss); on a clean link the "
        "wait stays dead_multiplier intervals. A dead master is still noticed within this."),
    Key("false_takeover_every", NUMBER, limits.FALSE_TAKEOVER_EVERY, 86400.0,
        "Seconds: how rare a takeover caused by lost adverts alone should be, at the loss "
        "measured; the dead interval for a lossy peer is widened to meet it (up to "
        "dead_interval_max): 86400 is one a day."),
    Key("realtime_priority", INTEGER, (0, 99), 10,
        "SCHED_RR priority of the thread that sends and reads the adverts, or 0 for none "
        "(as keepalived's vrrp_rt_priority). Takeover work (netlink, announcements) runs "
        "in other threads at normal priority, so a busy CPU cannot delay an advert past "
        "the peer's dead interval. Needs CAP_SYS_NICE."),
    Key("state_dir", PATH, None, "/var/lib/dpagent",
        "Directory where the agent keeps its heartbeat epoch across restarts, so that a "
        "node whose clock went backwards is not taken for a replay by its peers (the "
        "unit's StateDirectory)."),
)

_AUTH = (
    Key("key_file", PATH, None, REQUIRED,
        "File with the heartbeat and sync keys. It must be a regular file, not readable "
        "by others nor writable by group or others (chmod 600). Format: one `KEY_ID "
        f"SECRET_HEX` per line (key id {KEY_ID[0]} to {KEY_ID[1]}, secret at least "
        f"{MIN_SECRET_BYTES * 2} hex digits = {MIN_SECRET_BYTES} bytes), `#` comments; frames "
        f"are sent with the first key, and up to {MAX_KEYS} lines are accepted while a key "
        "rotation is under way. Create one with:\n"
        "  printf '1 %s\\n' \"$(openssl rand -hex 32)\" > /etc/dpagent/key && chmod 600 /etc/dpagent/key"),
)

_CONTROL = (
    Key("socket", PATH, None, "/run/dpagent/control.sock",
        f"Unix socket that `agentctl` talks to; at most {SUN_PATH_MAX} bytes."),
)

_METRICS = (
    Key("listen", STRING, None, None,
        'ADDRESS:PORT to serve /metrics on over HTTP, e.g. "127.0.0.1:9412" or "[::1]:9412"; left '
        "out, there is no listener (`agentctl metrics` shows the same). Never an address of a block "
        "or of a heartbeat link. Changing it needs a restart."),
)

# Sync frames: IPv6 unfragmented on a 1,500-byte MTU by default, a jumbo frame's worth on a
# dedicated link; never under one record and its header.
SYNC_DATAGRAM = (256, 65000)
# The event socket's buffer: a burst the loop cannot read at once waits there; past it the
# kernel drops events (ENOBUFS) and only a full resync repairs the peers' copies.
EVENT_BUFFER = (1 << 20, 1 << 30)
# The native event filter holds 64 prefixes (DP_CT_MAX_IGNORE); the links' own addresses take the rest.
MAX_CONNTRACK_IGNORE = 48
CONNTRACK_PROTOCOLS = ("tcp", "udp", "icmp", "icmpv6", "sctp", "dccp", "udplite")

_CONNTRACK = (
    Key("interface", INTERFACE, None, REQUIRED,
        "Interface the sync frames leave and arrive on: a heartbeat link's, or a dedicated one."),
    Key("peers", STRINGS, None, REQUIRED,
        "Unicast addresses of the other nodes on that interface (one IP version). Each peer "
        "acknowledges what it received and gets again what it missed."),
    Key("port", INTEGER, (1, 65535), 7789, "UDP port of the sync frames."),
    Key("mode", STRING, ("cache", "hot"), "cache",
        '"cache": the peers\' entries are kept in the agent (under 200 bytes each) and written '
        'into the kernel in bulk when this node takes over, before the block opens. "hot": every '
        "change is written into this node's kernel as it arrives (conntrackd's "
        "DisableExternalCache), so a takeover has nothing to write."),
    Key("ignore", STRINGS, None, None,
        "Addresses or prefixes whose flows are not synced (conntrackd's Address Ignore): a flow "
        "is left out when its original or its reply source is in one. The addresses of the "
        "heartbeat and sync links are added. Never list a block: its forwarded and NATed flows "
        "are the ones that must survive."),
    Key("protocols", STRINGS, None, None,
        f"IP protocols synced, from {', '.join(CONNTRACK_PROTOCOLS)}; left out, all of them."),
    Key("event_buffer", INTEGER, EVENT_BUFFER, 64 << 20,
        "Bytes of kernel buffer for conntrack events: at ~250 bytes an event, 64 MiB hold a "
        "quarter of a million events the agent has not read yet. An overflow is counted and "
        "answered by a full resync."),
    Key("expected_entries", INTEGER, (0, 100_000_000), 0,
        "Entries this node may have to hold after a takeover; when the kernel's nf_conntrack_max "
        "or hash table is smaller, `agentctl conntrack stats` and the log say what to set."),
    Key("window_tracking", BOOLEAN, None, False,
        "Keep TCP window tracking for the entries written on a takeover; off (conntrackd's "
        "default), the kernel picks the windows up from the next packets."),
    Key("max_datagram", INTEGER, SYNC_DATAGRAM, 1452, "Largest sync frame in bytes."),
)

# BIRD protocol names are symbols: a letter first, then letters, digits and '_'.
BIRD_SYMBOL_MAX = 64
MAX_BIRD_PROTOCOLS = 4

_BGP = (
    Key("bird_socket", PATH, None, "/run/bird/bird.ctl",
        "BIRD's control socket (bird -s), where the start-up check asks `show protocols`; at most "
        f"{SUN_PATH_MAX} bytes. The agent's user must be allowed to connect (Debian: group bird)."),
    Key("protocols", STRINGS, None, ("dpagent4", "dpagent6"),
        "Names of BIRD's kernel protocols that learn dpagent's routes (one per IP version, as in "
        "packaging/bird-dpagent.conf). The check reports each as up, down or missing; a "
        f"missing BIRD is a warning, not an error. 1 to {MAX_BIRD_PROTOCOLS} names."),
)

_HEARTBEAT = (
    Key("interface", INTERFACE, None, REQUIRED, "Interface the adverts leave and arrive on."),
    Key("group", STRING, None, None,
        "Multicast group (IPv4 or IPv6) to send adverts to. Give either group or peers."),
    Key("peers", STRINGS, None, None,
        "Unicast addresses of the other nodes, instead of a group (where multicast is "
        "filtered). All of one IP version per link."),
    Key("port", INTEGER, (1, 65535), 7788, "UDP port."),
)

_BLOCK = (
    Key("name", NAME, None, REQUIRED, "Name shown by agentctl and in metrics; unique."),
    Key("interface", INTERFACE, None, REQUIRED,
        "Interface the addresses live on (and announcements are sent from)."),
    Key("prefixes", STRINGS, None, None,
        "CIDR prefixes, IPv4 or IPv6. The address must be the network address (no host "
        f"bits). IPv4: /{MIN_V4_PREFIXLEN} or longer, each becomes one AnyIP route. IPv6: "
        f"/{MIN_V6_PREFIXLEN} or longer (at most "
        f"{MAX_V6_BLOCK_ADDRESSES:,} addresses), since each address is configured on the "
        "interface and gets its own neighbour advertisement."),
    Key("addresses", STRINGS, None, None, "Single addresses, IPv4 or IPv6 (a /32 or /128 suffix is accepted)."),
    Key("address_files", STRINGS, None, None,
        "Classic address files as ucarp up-scripts used them (`eth1.addr.external`): one "
        "address per line, `#` comments (also after an address), blank lines, surrounding "
        "spaces and CRLF line ends are all fine. An error shows the text of a bad line "
        "only when the file is readable by all and holds nothing that looks like a key. "
        f"At most {MAX_FILE_BYTES >> 20} MiB a file, and at most {MAX_LOOSE_ADDRESSES:,} single "
        "addresses in all blocks together: give large ranges as prefixes."),
    Key("announce", TABLE, None, None,
        "How a takeover is announced: on the segment, gratuitous ARP for IPv4 and unsolicited "
        "neighbour advertisements for IPv6, for every address of the block (l2 mode garp) or a "
        "few frames from the virtual MAC (vmac); and/or upstream over BGP (via)."),
    Key("l2", TABLE, None, None,
        "How neighbours reach the block's holder, and so what a takeover costs on the wire."),
    Key("mode", STRING, ("active-passive", "active-active"), "active-passive",
        '"active-passive": the master holds the block, the others stand by. "active-active": '
        "every live node holds it and accepts the flows of its own share of the block's flow "
        "buckets; a node that dies or leaves hands only its own buckets to the others. Needs "
        "[block.l2] mode cluster-mac."),
    Key("weight", NUMBER, (0.001, 1000.0), 1.0,
        "With mode active-active: this node's share of the block's buckets, relative to the "
        "other nodes' weights."),
)

# VRRP's virtual router MACs (RFC 5798): 00:00:5e:00:01:VRID for IPv4, 00:00:5e:00:02:VRID for IPv6.
VMAC_PREFIX = {4: "00:00:5e:00:01", 6: "00:00:5e:00:02"}
# CLUSTERIP had one bucket per node (at most 16). A flip of every bucket is one netlink
# message, which must fit the socket's send buffer (~208 KiB): 1,024 buckets are ~70 KiB.
MAX_BUCKETS = 1 << 10
# Blocks one XDP filter serves (DP_MAX_BLOCKS in native/xdp_filter.h).
MAX_XDP_BLOCKS = 64

_L2 = (
    Key("mode", STRING, ("garp", "vmac", "cluster-mac"), "garp",
        '"garp": each node answers ARP / NDP with its own MAC and a takeover announces every '
        'address (a /16 is 65,536 frames). "vmac": a virtual MAC shared by the nodes, as VRRP '
        "defines it, on a macvlan of the interface that is up only on the holder; neighbours' "
        "entries never change and a takeover sends a few frames from it, whatever the "
        'block\'s size. "cluster-mac": the CLUSTERIP replacement, one multicast MAC that '
        "every node receives; ARP replies and neighbour advertisements carry it, and a flow "
        "hash in a netdev ingress filter decides which node accepts a packet: a takeover "
        "sends nothing at all."),
    Key("vrid", INTEGER, (1, 255), None,
        "Virtual router id, required with mode vmac: the MAC is "
        f"{VMAC_PREFIX[4]}:VRID for an IPv4 block, {VMAC_PREFIX[6]}:VRID for an IPv6 one (a vmac "
        "block holds addresses of one IP version). Unique per IP version on this node, and "
        "the same on every node of the cluster."),
    Key("cluster_mac", STRING, None, "01:00:5e:00:01:01",
        "With mode cluster-mac: the shared multicast MAC (the first octet's lowest bit set), "
        "the same on every node and different for each cluster-mac block of an interface. "
        "It is added to the interface's multicast filter, as `ip maddr add` does."),
    Key("buckets", INTEGER, (1, MAX_BUCKETS), 256,
        "With mode cluster-mac: the number of flow-hash buckets; the holder owns them all "
        "(active/passive). The same on every node."),
    Key("hash", STRING, ("sourceip", "sourceip-sourceport", "sourceip-sourceport-destport"), "sourceip",
        "With mode cluster-mac: what the flow hash covers, as CLUSTERIP's hashmode. It is "
        "the outside peer's side of a packet arriving for a block address: its source."),
    Key("hash_seed", INTEGER, (0, 0xFFFFFFFF), 0x5EED,
        "With mode cluster-mac: the jhash seed; the same on every node."),
    Key("backend", STRING, ("nft", "xdp"), "nft",
        'With mode cluster-mac: where the flow hash runs. "nft": a netdev ingress filter, '
        'after the kernel has built a socket buffer for every frame. "xdp": an XDP program '
        "at the driver (native mode where the driver has it, else generic), which drops "
        "the frames of buckets this node does not own before that; at most "
        f"{MAX_XDP_BLOCKS} such blocks. The same hash either way, so nodes may differ; "
        "ARP and NDP stay in nftables."),
)

# How upstream routers learn a block's holder: on the segment (ARP/NDP, per [block.l2]),
# through BIRD over BGP, or both.
ANNOUNCE_VIA = ("l2", "bgp", "both")

_ANNOUNCE = (
    Key("via", STRING, ANNOUNCE_VIA, "l2",
        '"l2": neighbours on the segment learn the holder as [block.l2] mode says (the keys below). '
        '"bgp": the holder puts one companion route per prefix and per loose address '
        "(`unreachable PREFIX table 199 proto 199`, a table no rule looks up) in the kernel while it "
        "holds the block, and BIRD announces it upstream ([bgp]); an active/active block is announced "
        'by every node that holds it, for ECMP upstream. "both": the two together.'),
    Key("pps", INTEGER, (0, 10_000_000), 0, "Frames per second at most; 0 means as fast as possible."),
    Key("rounds", INTEGER, (1, 100), 2,
        "Times the whole block is announced after a takeover (2 is like `arping -A -c 2`)."),
    Key("round_delay", NUMBER, (0.1, 3600.0), 2.0,
        "Seconds between two rounds; the default is more than the 1 s locktime during "
        "which Linux neighbours ignore a second update."),
    Key("refresh", NUMBER_OR_OFF, (1.0, 86400.0), 0.0, "Seconds between re-announcements while master."),
    Key("arp_mode", STRING, ("request", "reply"), "request",
        'Kind of gratuitous ARP: "request" works with most neighbours, "reply" is what '
        "`arping -A` sends."),
)

TABLES_BY_PATH: dict[str, tuple[Key, ...]] = {
    "": _TOP,
    "node": _NODE,
    "auth": _AUTH,
    "control": _CONTROL,
    "metrics": _METRICS,
    "conntrack": _CONNTRACK,
    "bgp": _BGP,
    "heartbeat": _HEARTBEAT,
    "block": _BLOCK,
    "block.announce": _ANNOUNCE,
    "block.l2": _L2,
}
"""Schema path of a table (array indexes left out) -> its keys, in the order they are documented."""


def default(table: str, name: str) -> Any:
    """The value a key takes when it is absent, for the model's field defaults."""
    return next(k.default for k in TABLES_BY_PATH[table] if k.name == name)


def describe(k: Key) -> str:
    """What a valid value is, as in "must be <this>"; the example's comments say the same."""
    if k.type == INTEGER:
        return f"an integer from {k.range[0]} to {k.range[1]}"
    if k.type == NUMBER:
        return f"a number from {number(k.range[0])} to {number(k.range[1])}"
    if k.type == NUMBER_OR_OFF:
        return f"0 (off) or a number from {number(k.range[0])} to {number(k.range[1])}"
    if k.type == STRING and k.range:
        return " or ".join(toml(choice) for choice in k.range)
    if k.type == INTERFACE:
        return f"a Linux interface name (1 to {IFNAMSIZ - 1} bytes, no '/', ':' or spaces)"
    if k.type == NAME:
        return f"1 to {BLOCK_NAME_MAX} characters from A-Z, a-z, 0-9, '_' and '-'"
    if k.type == TABLES:
        return f"an array of tables ([[{k.name}]])"
    return {BOOLEAN: "true or false", STRING: "a string", PATH: "a path", STRINGS: "a list of strings",
            TABLE: "a table"}[k.type]
