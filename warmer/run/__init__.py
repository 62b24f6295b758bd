"""Training jobs on the cache: wrap a command, count what torch compiled in each of its processes, explain misses."""
