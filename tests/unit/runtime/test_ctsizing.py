"""The sync says what to size when the kernel's table cannot hold what a takeover brings."""

from agent.runtime.ctsync import sizing


def test_a_table_too_small_names_the_settings_and_values() -> None:
    warnings = sizing(1_000_000, {"count": 10, "max": 262_144, "buckets": 65_536})
    assert warnings == [
        "net.netfilter.nf_conntrack_max is 262144, under the 1000000 entries expected: set it to 1000000 or more",
        "the conntrack hash table has 65536 buckets for 1000000 entries expected: set "
        "/sys/module/nf_conntrack/parameters/hashsize to 1000000 or more",
    ]


def test_a_table_big_enough_or_nothing_expected_says_nothing() -> None:
    assert sizing(1_000_000, {"count": 0, "max": 1_250_000, "buckets": 1_048_576}) == []
    assert sizing(0, {"count": 0, "max": 1, "buckets": 1}) == []
    assert sizing(1_000, {"count": None, "max": None, "buckets": None}) == []
