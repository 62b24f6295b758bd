"""What happened over time: one record per run and warm, summed into stats and Prometheus metrics."""
