"""Query time: an opened index, search over its shards, and the rankings."""
