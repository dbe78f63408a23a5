"""agent.core.plan: the takeover order is data, and a release is its mirror."""

from agent.core import plan


def test_takeover_makes_the_block_serve_before_anything_is_announced():
    steps = plan.takeover({"addresses", "announce"})
    assert [s.facility for s in steps] == ["addresses", "announce"]
    first, behind = plan.phases(steps)
    assert [s.facility for s in first] == ["addresses"]
    assert [s.facility for s in behind] == ["announce"]


def test_release_stops_announcing_before_the_addresses_go():
    assert [s.facility for s in plan.release({"announce", "addresses"})] == ["announce", "addresses"]


def test_a_block_gets_only_the_facilities_it_uses_in_the_plans_order():
    assert [s.facility for s in plan.takeover({"announce"})] == ["announce"]
    assert plan.takeover(set()) == ()
    assert [s.facility for s in plan.takeover(["announce", "addresses", "unknown"])] == ["addresses", "announce"]


def test_reannounce_runs_only_the_announcing_steps():
    assert [s.facility for s in plan.reannounce({"addresses", "announce"})] == ["announce"]


def test_every_planned_facility_is_named_once():
    names = [s.facility for s in plan.TAKEOVER]
    assert len(names) == len(set(names))


def test_the_gate_opens_before_the_addresses_are_local_and_closes_after_they_are_gone():
    everything = {"gate", "addresses", "announce"}
    assert [s.facility for s in plan.takeover(everything)] == ["gate", "addresses", "announce"]
    assert [s.facility for s in plan.release(everything)] == ["announce", "addresses", "gate"]
    first, behind = plan.phases(plan.takeover(everything))
    assert [s.facility for s in first] == ["gate", "addresses"]


def test_each_l2_mode_runs_its_own_steps():
    everything = {step.facility for step in plan.TAKEOVER} - {"conntrack"}
    assert [s.facility for s in plan.takeover(everything, "garp")] == ["gate", "addresses", "announce"]
    # The vmac is up before the addresses are local; a few frames from it go behind.
    assert [s.facility for s in plan.takeover(everything, "vmac")] == ["gate", "vmac", "addresses", "announce"]
    # A cluster-mac takeover announces nothing: every node already receives the block's MAC.
    assert [s.facility for s in plan.takeover(everything, "cluster-mac")] == ["gate", "buckets", "addresses"]
    assert [s.facility for s in plan.release(everything, "cluster-mac")] == ["addresses", "buckets", "gate"]
    assert plan.reannounce(everything, "cluster-mac") == ()


def test_a_cluster_mac_block_owns_its_buckets_in_its_backend_only():
    everything = {step.facility for step in plan.TAKEOVER} - {"conntrack"}
    assert [s.facility for s in plan.takeover(everything, "cluster-mac", "xdp")] == ["gate", "xdp", "addresses"]
    assert [s.facility for s in plan.release(everything, "cluster-mac", "xdp")] == ["addresses", "xdp", "gate"]
    # The other modes have no cluster filter, whatever the backend says.
    assert plan.takeover(everything, "garp", "xdp") == plan.takeover(everything, "garp", "nft")


def test_connection_state_is_in_the_kernel_before_the_gate_opens():
    everything = {step.facility for step in plan.TAKEOVER}
    for mode in plan.L2_MODES:
        steps = plan.takeover(everything, mode)
        assert steps[0].facility == "conntrack" and steps[0].before_traffic and steps[1].facility == "gate"
        assert plan.release(everything, mode)[-1].facility == "conntrack"


def test_bgp_routes_follow_the_addresses_and_go_first_on_release():
    everything = {step.facility for step in plan.TAKEOVER} - {"conntrack"}
    assert [s.facility for s in plan.takeover(everything, via="bgp")] == ["gate", "addresses", "routes"]
    assert [s.facility for s in plan.release(everything, via="bgp")] == ["routes", "addresses", "gate"]
    # Not behind another block's GARP wave: the route goes out with the steps traffic waits for.
    first, behind = plan.phases(plan.takeover(everything, via="both"))
    assert [s.facility for s in first] == ["gate", "addresses", "routes"]
    assert [s.facility for s in behind] == ["announce"]
    # Re-announcing sends frames; the routes stay in the kernel and need nothing again.
    assert [s.facility for s in plan.reannounce(everything, via="both")] == ["announce"]
    assert plan.reannounce(everything, via="bgp") == ()


def test_an_l2_block_has_no_routes_and_a_bgp_block_no_frames():
    everything = {step.facility for step in plan.TAKEOVER} - {"conntrack"}
    assert "routes" not in [s.facility for s in plan.takeover(everything, via="l2")]
    assert [s.facility for s in plan.takeover(everything, "cluster-mac", "xdp", "bgp")] == [
        "gate", "xdp", "addresses", "routes"]
    assert [s.facility for s in plan.takeover(everything, "vmac", via="bgp")] == [
        "gate", "vmac", "addresses", "routes"]
