"""agent.core.links: what the election hears when an interface changes."""

from agent.core.events import CarrierLost, LinkChanged, LinkRole
from agent.core.links import ADMIN_DOWN, MISSING, NO_CARRIER, UP, heartbeat_usable, link_events


def test_carrier_loss_on_a_heartbeat_link_is_news_about_the_peer_not_a_fault_here():
    assert link_events("hb0", False, NO_CARRIER, heartbeat=True, block=False) == [
        LinkChanged("hb0", LinkRole.HEARTBEAT, True, NO_CARRIER), CarrierLost("hb0")]


def test_a_heartbeat_link_down_here_is_down():
    for reason in (ADMIN_DOWN, MISSING):
        assert link_events("hb0", False, reason, heartbeat=True, block=False) == [
            LinkChanged("hb0", LinkRole.HEARTBEAT, False, reason)]
        assert not heartbeat_usable(False, reason)


def test_a_block_link_without_carrier_is_a_fault():
    assert link_events("ext0", False, NO_CARRIER, heartbeat=False, block=True) == [
        LinkChanged("ext0", LinkRole.BLOCK, False, NO_CARRIER)]


def test_a_link_that_is_both_reports_both_roles():
    assert link_events("eth0", True, UP, heartbeat=True, block=True) == [
        LinkChanged("eth0", LinkRole.HEARTBEAT, True, UP), LinkChanged("eth0", LinkRole.BLOCK, True, UP)]


def test_a_link_that_is_neither_says_nothing():
    assert link_events("eth9", False, ADMIN_DOWN, heartbeat=False, block=False) == []
