"""The ranges of the election's settings, defined once.

The configuration schema offers exactly these ranges and `ElectionConfig`
enforces them, so a value the config accepts is one the election runs with.
Each range is (lowest, highest), both included.

These are not the wire's MIN_INTERVAL_US/MAX_INTERVAL_US (agent/core/wire.py):
those say what a peer's frame may carry and stay wider on purpose, so that a
peer configured by another release with other limits is still heard.
"""

# A u32 on the wire; 0 is kept free so that "no node" never looks like a node.
NODE_ID = (1, 2**32 - 1)
# VRRP's range: 0 and 255 are reserved there (resign, address owner).
PRIORITY = (1, 254)
# Seconds. Below 10 ms a busy machine misses adverts; above 10 s a failover
# takes longer than any session survives.
ADVERT_INTERVAL = (0.01, 10.0)
# At least two missed adverts before a takeover, so one lost frame never moves
# the blocks; beyond 20 a dead master is noticed too late to matter.
DEAD_MULTIPLIER = (2, 20)
# Seconds; an hour is already longer than any flapping worth waiting out.
PREEMPT_DELAY = (0.0, 3600.0)
# Seconds: the ceiling of a lossy peer's widened dead interval (core.loss). At
# least two adverts at the fastest interval; beyond a minute a dead master
# holds the blocks hostage longer than the loss could ever cost.
DEAD_INTERVAL_MAX = (0.02, 60.0)
# Seconds: one false takeover per this long is what loss-tolerant detection
# aims for. From a minute (testing) to ten years.
FALSE_TAKEOVER_EVERY = (60.0, 10 * 365 * 86400.0)
