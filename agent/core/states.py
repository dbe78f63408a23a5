"""Node states, numbered as keepalived numbers them so existing dashboards read ours."""

from enum import IntEnum


class State(IntEnum):
    INIT = 0
    BACKUP = 1
    MASTER = 2
    FAULT = 3
    MAINTENANCE = 4
