"""Pictures of lab failovers (matplotlib): a timeline per run and a summary of outages.

The timeline shows what the 1 ms probe (agent.labprobe) saw: one row per probed
address, a bar wherever replies kept coming, coloured by the node whose MAC sent
them, so the gap of each address and the holder answering after it are seen at
a glance; above it, the new master's takeover steps as its status reports them
(each started at, took), and lines at the failure, the detection and the first
reply. Times are milliseconds from the failure. Only `make run`, the benchmarks
and the tests draw, so matplotlib (Debian's python3-matplotlib) is imported when
a picture is made, never by the agent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.labprobe import AddressOutage

NODE_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                "tab:cyan")
UNKNOWN_COLOUR = "tab:gray"
# Replies of one address closer than this (or three probe intervals) are drawn as one bar.
JOIN_S = 0.003


@dataclass(frozen=True)
class Mark:
    """A moment on the timeline (absolute time, s) with what happened."""

    at: float
    label: str


@dataclass(frozen=True)
class Step:
    """One takeover step of the new master: absolute start, duration in s, name, ok."""

    started: float
    seconds: float
    name: str
    ok: bool = True


def takeover(transition: dict) -> tuple[Mark, list[Step]]:
    """The detection and the steps of one transition of a status document."""
    detect = Mark(transition["at"], f"{transition['old']} -> {transition['new']}: {transition['reason']}")
    steps = [Step(s["started"], s["seconds"], s["name"], s.get("ok", True)) for s in transition["steps"]]
    return detect, steps


def reply_bars(result: dict, index: int, start: float, end: float) -> list[tuple[float, float, str]]:
    """(from, to, MAC) runs of the replies to target `index` between `start` and `end`."""
    target_of = {seq: i for seq, _, i in result["sent"]}
    times = sorted((t, mac) for seq, t, mac in result["replies"] if target_of.get(seq) == index and start <= t <= end)
    join = max(JOIN_S, 3 * result["interval"])
    bars: list[tuple[float, float, str]] = []
    for t, mac in times:
        if bars and bars[-1][2] == mac and t - bars[-1][1] <= join:
            bars[-1] = (bars[-1][0], t, mac)
        else:
            bars.append((t, t, mac))
    return bars


def probe_pauses(result: dict, start: float, end: float) -> list[tuple[float, float]]:
    """Stretches where the probe sent nothing for longer than JOIN_S (its process waited for a
    CPU): no reply there says nothing about the nodes."""
    sent = sorted(t for _, t, _ in result["sent"] if start <= t <= end)
    return [(a, b) for a, b in zip(sent, sent[1:]) if b - a > JOIN_S]


def timeline(path: Path, result: dict, failed_at: float, nodes: dict[str, str], *, outages: list[AddressOutage],
             detect: Mark | None = None, steps: Iterable[Step] = (), failure: str = "failure",
             title: str = "") -> Path:
    """Write the timeline PNG of one run to `path`. `nodes` names the nodes by MAC address."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    steps = list(steps)
    back = [o.first_after for o in outages if o.back]
    end = max([*back, *(s.started + s.seconds for s in steps), failed_at]) + 0.1
    start = failed_at - 0.05

    def ms(t: float) -> float:
        return (t - failed_at) * 1000

    colours = {mac: NODE_COLOURS[i % len(NODE_COLOURS)] for i, mac in enumerate(sorted(nodes, key=nodes.get))}

    figure = Figure(figsize=(10, 2.2 + 0.25 * len(outages) + 0.22 * len(steps)), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[max(1, len(steps)), max(4, len(outages))])
    for row, step in enumerate(steps):
        width = max(step.seconds * 1000, (end - start) * 1000 * 0.002)
        top.barh(row, width, left=ms(step.started), height=0.6, color="tab:green" if step.ok else "tab:red")
        top.text(ms(step.started + step.seconds) + (end - start) * 1000 * 0.01, row,
                 f"{step.name} {step.seconds * 1000:.1f} ms" + ("" if step.ok else " FAILED"), va="center",
                 fontsize=8)
    top.set_yticks([])
    top.set_ylim(len(steps) - 0.5 if steps else 0.5, -0.5)
    top.set_title(title or "failover timeline", fontsize=10, loc="left")
    top.set_ylabel("steps", fontsize=8)

    for first, last in probe_pauses(result, start, end):
        bottom.axvspan(ms(first), ms(last), color="0.88", linewidth=0)
    for row, item in enumerate(outages):
        for first, last, mac in reply_bars(result, result["targets"].index(item.target), start, end):
            bottom.barh(row, max(ms(last) - ms(first), 0.5), left=ms(first), height=0.7,
                        color=colours.get(mac, UNKNOWN_COLOUR))
        if item.back:
            bottom.plot(ms(item.first_after), row, marker="|", color="black", markersize=9)
    bottom.set_yticks(range(len(outages)), [f"{o.target}  {o.seconds * 1000:.1f} ms" for o in outages], fontsize=7)
    bottom.set_ylim(len(outages) - 0.5, -0.5)
    bottom.set_xlabel(f"ms after the {failure}")
    bottom.set_ylabel("probed address, its outage", fontsize=8)

    marks = [(Mark(failed_at, failure), "tab:red", "-")]
    if detect:
        marks.append((detect, "black", "--"))
    if back:
        marks.append((Mark(min(back), "first reply from the new holder"), "tab:green", ":"))
    for axes in (top, bottom):
        for mark, colour, style in marks:
            axes.axvline(ms(mark.at), color=colour, linestyle=style, linewidth=1)
    bottom.set_xlim(ms(start), ms(end))
    handles = [Patch(color=colours[mac], label=f"replies from {name}") for mac, name in nodes.items()]
    handles += [Line2D([], [], color=c, linestyle=s, label=f"{m.label} ({ms(m.at):.1f} ms)") for m, c, s in marks]
    handles.append(Line2D([], [], color="black", marker="|", linestyle="", label="address back"))
    handles.append(Patch(color="0.88", label="the probe itself paused (no requests sent)"))
    # Below the axis labels: about half an inch, in the fraction of the axes' height it is.
    bottom.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.55 / (0.25 * max(4, len(outages)))),
                  ncol=2, fontsize=7, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


@dataclass(frozen=True)
class Outcome:
    """One bar of the summary: a system (with its L2 mode) in one setting, its worst and median
    address outage in ms, and whether the worst is only a lower bound."""

    system: str
    block: int
    heartbeat: str
    case: str
    worst_ms: float
    median_ms: float | None
    lower_bound: bool = False


def summary(path: Path, outcomes: list[Outcome], title: str = "failover outage, worst address") -> Path:
    """Write a bar chart of the worst-address outage by system and block size, one panel per
    heartbeat topology (rows) and case (columns), on one log scale from 1 ms (a few ms next to
    tens of seconds)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    heartbeats = sorted({o.heartbeat for o in outcomes})
    cases = sorted({o.case for o in outcomes})
    systems = sorted({o.system for o in outcomes})
    blocks = sorted({o.block for o in outcomes})
    colours = {s: NODE_COLOURS[i % len(NODE_COLOURS)] for i, s in enumerate(systems)}
    figure = Figure(figsize=(1.5 + 2.2 * len(cases) * max(1, len(blocks)) * max(1, len(systems)) / 3,
                             1.5 + 3.2 * len(heartbeats)), layout="constrained")
    grid = figure.subplots(max(1, len(heartbeats)), max(1, len(cases)), squeeze=False, sharey=True)
    width = 0.8 / max(1, len(systems))
    top = max([o.worst_ms for o in outcomes] + [1.0]) * 4
    for row, heartbeat in enumerate(heartbeats):
        for column, case in enumerate(cases):
            axes = grid[row][column]
            for i, system in enumerate(systems):
                for j, block in enumerate(blocks):
                    found = next((o for o in outcomes if (o.system, o.block, o.heartbeat, o.case)
                                  == (system, block, heartbeat, case)), None)
                    if found is None:
                        continue
                    x = j - 0.4 + width * (i + 0.5)
                    axes.bar(x, found.worst_ms - 1, width * 0.9, bottom=1, color=colours[system],
                             hatch="//" if found.lower_bound else None, edgecolor="white")
                    if found.median_ms:
                        axes.plot(x, found.median_ms, marker="_", color="black", markersize=12)
                    axes.text(x, found.worst_ms * 1.15, ("≥" if found.lower_bound else "") + f"{found.worst_ms:,.0f}",
                              ha="center", va="bottom", fontsize=7)
            axes.set_yscale("log")
            axes.set_ylim(1, top)
            axes.set_xticks(range(len(blocks)), [f"{b:,} addresses" for b in blocks], fontsize=8)
            axes.set_title(f"{case}, heartbeat {heartbeat}", fontsize=9)
            if column == 0:
                axes.set_ylabel("ms (log)")
    handles = [Patch(color=colours[s], label=s) for s in systems]
    handles += [Line2D([], [], color="black", marker="_", linestyle="", label="median address"),
                Patch(facecolor="lightgray", hatch="//", label="lower bound (never finished)")]
    grid[0][0].legend(handles=handles, loc="upper left", fontsize=7, frameon=False)
    figure.suptitle(title, fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
