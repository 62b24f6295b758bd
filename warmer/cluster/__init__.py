"""The cluster side: SLURM jobs that warm the cache on each GPU type before the training jobs that need it."""
