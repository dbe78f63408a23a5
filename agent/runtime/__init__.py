"""The uvloop daemon: the only place that schedules I/O."""
