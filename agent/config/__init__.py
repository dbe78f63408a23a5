"""The configuration: its model, schema, files and messages, outside the sans-I/O core."""

from agent.config.loader import (
    DEFAULT_PATH,
    AnnounceConfig,
    Block,
    Config,
    ConfigError,
    ConfigInvalid,
    HeartbeatLink,
    NodeConfig,
    format_errors,
    load_config,
    load_keys,
)

__all__ = [
    "DEFAULT_PATH", "AnnounceConfig", "Block", "Config", "ConfigError", "ConfigInvalid", "HeartbeatLink",
    "NodeConfig", "format_errors", "load_config", "load_keys",
]
