"""agent.lab without namespaces: the demo's choice of block."""

from __future__ import annotations

import pytest

from agent.lab import demo_block


def test_the_demo_block_is_a_prefix_length_or_a_prefix_inside_the_lab_block():
    assert demo_block("/24") == "198.18.0.0/24" and demo_block("198.18.4.0/22") == "198.18.4.0/22"
    with pytest.raises(ValueError, match="inside 198.18.0.0/16"):
        demo_block("198.19.0.0/24")
