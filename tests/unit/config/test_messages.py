"""agent.config.messages: how an error reads."""

from __future__ import annotations

from agent.config import ConfigError


def test_config_error_str() -> None:
    assert str(ConfigError("node.priority", 300, "must be an integer from 1 to 254")) == (
        "node.priority = 300: must be an integer from 1 to 254")
    assert str(ConfigError("node.id", None, "is required")) == "node.id: is required"

