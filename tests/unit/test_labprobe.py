"""The probe's targets and the per-address outage, on made-up reply streams."""

from __future__ import annotations

import pytest

from agent.labprobe import address_outages, outage_stats, probe_targets

OLD, NEW = "02:00:00:00:00:01", "02:00:00:00:00:02"
MS = 0.001


def test_targets_span_the_block_from_the_first_to_the_last_usable_address():
    targets = probe_targets("198.18.0.0/16", 16)
    assert len(set(targets)) == 16
    assert targets[0] == "198.18.0.1" and targets[-1] == "198.18.255.254"
    assert probe_targets("198.18.0.0/24", 8)[::7] == ["198.18.0.1", "198.18.0.254"]
    assert probe_targets("2001:db8:1::/116", 2) == ["2001:db8:1::1", "2001:db8:1::fff"]
    assert probe_targets("192.0.2.0/30", 16) == ["192.0.2.1", "192.0.2.2"]


def stream(answers, targets=2, start=100.0, until=100.5):
    """A probe record: every target probed each 1 ms; answers(index, t) -> MAC or None (lost)."""
    sent, replies, seq, t = [], [], 0, start
    while t < until:
        for index in range(targets):
            sent.append((seq, t, index))
            mac = answers(index, t)
            if mac:
                replies.append((seq, t + 0.2 * MS, mac))
            seq += 1
        t += MS
    return {"targets": [f"198.18.0.{i + 1}" for i in range(targets)], "sent": sent, "replies": replies}


def test_each_address_has_its_own_outage_from_last_old_reply_to_first_new():
    fail = 100.2
    back = {0: fail + 5 * MS, 1: fail + 50 * MS}

    def answers(index, t):
        return OLD if t < fail else (NEW if t >= back[index] else None)

    found = address_outages(stream(answers), fail, NEW)
    assert [o.seconds for o in found] == pytest.approx([6 * MS, 51 * MS], abs=0.6 * MS)
    assert all(o.back and o.old_after_new == 0 for o in found)
    assert all(o.max_send_gap == pytest.approx(MS) for o in found)
    stats = outage_stats(found)
    assert stats["first"] == found[0].seconds and stats["worst"] == found[1].seconds
    assert stats["median"] == pytest.approx((found[0].seconds + found[1].seconds) / 2)


def test_time_the_old_holder_still_answered_is_not_outage():
    fail = 100.2

    def answers(index, t):
        if t < fail + 20 * MS:
            return OLD  # a graceful hand-over: the old holder serves on for 20 ms
        return NEW if t >= fail + 30 * MS else None

    (only,) = address_outages(stream(answers, targets=1), fail, NEW)
    assert only.seconds == pytest.approx(11 * MS, abs=0.6 * MS)
    assert only.last_before == pytest.approx(fail + 19 * MS, abs=MS)


def test_an_address_never_back_is_a_lower_bound_up_to_the_end():
    fail = 100.2

    def answers(index, t):
        return OLD if t < fail else (NEW if index == 0 else None)

    found = address_outages(stream(answers), fail, NEW, ended_at=100.5)
    assert found[0].back and not found[1].back
    assert found[1].first_after is None
    assert found[1].seconds == pytest.approx(0.3, abs=2 * MS)


def test_the_old_holder_answering_after_the_new_one_is_counted():
    fail = 100.2

    def answers(index, t):
        if t < fail:
            return OLD
        return NEW if int(round((t - fail) / MS)) % 10 else OLD  # flapping back every 10 ms

    (only,) = address_outages(stream(answers, targets=1), fail, NEW)
    assert only.old_after_new > 0
