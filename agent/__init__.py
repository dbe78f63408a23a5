"""dpagent: moves large address blocks between Linux nodes on failover."""
