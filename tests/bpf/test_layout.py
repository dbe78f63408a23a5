"""native/xdp_filter.h as the BPF compiler laid it out (the object's BTF) and as cffi did.

Both sides read one header; this proves they agree, member by member, and that the
agent's constants are the header's.
"""

from __future__ import annotations

import pytest

from agent.config.schema import MAX_BUCKETS, MAX_XDP_BLOCKS
from agent.core.buckets import HashFields
from agent.dataplane import bpf, xdp
from agent.dataplane.xdp import ffi, lib

STRUCTS = ("dp_v4_key", "dp_v6_key", "dp_block", "dp_counters")


@pytest.mark.parametrize("name", STRUCTS)
def test_every_member_has_one_offset_and_size(name: str) -> None:
    ctype = ffi.typeof(f"struct {name}")
    assert bpf.btf_layout(bpf.FILTER_OBJECT, name) == (0, ffi.sizeof(ctype))
    for member, field in ctype.fields:
        assert bpf.btf_layout(bpf.FILTER_OBJECT, name, member) == (field.offset, ffi.sizeof(field.type)), member


def test_the_agent_and_the_program_share_their_limits() -> None:
    assert lib.DP_MAX_BUCKETS == MAX_BUCKETS == lib.DP_OWNED_WORDS * 32
    assert lib.DP_MAX_BLOCKS == MAX_XDP_BLOCKS == lib.DP_NO_BLOCK
    assert len(xdp.COUNTERS) == lib.DP_COUNTERS
    assert [xdp.HASHES[f] for f in HashFields] == [lib.DP_HASH_SOURCE, lib.DP_HASH_SOURCE_PORT,
                                                  lib.DP_HASH_SOURCE_PORTS]


def test_a_missing_member_is_an_error_that_names_it() -> None:
    with pytest.raises(bpf.BpfError, match="no_such_member"):
        bpf.btf_layout(bpf.FILTER_OBJECT, "dp_block", "no_such_member")
