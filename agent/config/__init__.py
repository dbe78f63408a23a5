"""The configuration: its model, schema, files and messages, outside the sans-I/O core.

The rest of the agent imports from here only; the modules behind it are split by concern.
"""

from agent.config.build import load_config
from agent.config.keys import load_keys
from agent.config.messages import ConfigError, ConfigInvalid, format_errors
from agent.config.model import (
    AnnounceConfig, BgpConfig, Block, Config, ConntrackConfig, HeartbeatLink, L2Config, NodeConfig,
)
from agent.config.schema import DEFAULT_PATH

__all__ = [
    "DEFAULT_PATH", "AnnounceConfig", "BgpConfig", "Block", "Config", "ConfigError", "ConfigInvalid",
    "ConntrackConfig", "HeartbeatLink", "L2Config",
    "NodeConfig", "format_errors", "load_config", "load_keys",
]
