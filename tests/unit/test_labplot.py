"""agent.labplot on a synthetic probe record: reply bars by node, the probe's own pauses, and PNGs."""

from __future__ import annotations

import pytest

from agent.labprobe import address_outages

pytest.importorskip("matplotlib")
from agent import labplot  # noqa: E402

OLD, NEW = "02:00:00:00:00:01", "02:00:00:00:00:02"


def record() -> dict:
    """Two targets probed every 1 ms for 1 s; the old node answers until 0.5 s, the new one from
    0.52 s (target 0) and 0.60 s (target 1); the probe sent nothing from 0.70 to 0.75 s."""
    sent, replies, seq = [], [], 0
    for k in range(1000):
        t = 100.0 + k / 1000
        if 100.70 < t < 100.75:
            continue
        for index, back in enumerate((100.52, 100.60)):
            sent.append((seq, t, index))
            if t < 100.5:
                replies.append((seq, t + 0.0002, OLD))
            elif t >= back:
                replies.append((seq, t + 0.0002, NEW))
            seq += 1
    return {"targets": ["198.18.0.1", "198.18.0.254"], "interval": 0.001, "sent": sent, "replies": replies}


def test_replies_join_into_bars_per_node_and_pauses_of_the_probe_are_found():
    result = record()
    bars = labplot.reply_bars(result, 1, 100.0, 101.0)
    assert [mac for _, _, mac in bars] == [OLD, NEW, NEW]
    assert bars[0][1] == pytest.approx(100.4992) and bars[1][0] == pytest.approx(100.6002)
    assert labplot.probe_pauses(result, 100.0, 101.0) == [pytest.approx((100.70, 100.75), abs=0.0011)]


def test_a_timeline_and_a_summary_are_written_as_png(tmp_path):
    result = record()
    outages = address_outages(result, 100.5, NEW)
    transition = {"at": 100.51, "old": "BACKUP", "new": "MASTER", "reason": "master 1 unreachable",
                  "steps": [{"name": "take:ext", "started": 100.511, "seconds": 0.0004, "ok": True},
                            {"name": "announce:ext", "started": 100.512, "seconds": 0.09, "ok": True}]}
    detect, steps = labplot.takeover(transition)
    assert detect.at == 100.51 and [s.name for s in steps] == ["take:ext", "announce:ext"]
    path = labplot.timeline(tmp_path / "t.png", result, 100.5, {OLD: "fw1", NEW: "fw2"}, outages=outages,
                            detect=detect, steps=steps, failure="kill")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    outcomes = [labplot.Outcome("dpagent garp", 256, "direct", "kill", 5.0, 4.0),
                labplot.Outcome("keepalived-fast", 65536, "direct", "kill", 90000.0, None, lower_bound=True)]
    assert labplot.summary(tmp_path / "s.png", outcomes).read_bytes()[:4] == b"\x89PNG"

