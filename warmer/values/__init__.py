"""Values that travel between the stages: targets, plans, fingerprints, shape profiles, counters, results."""
