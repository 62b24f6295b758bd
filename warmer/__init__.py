"""nnunet-warmer: precompile nnU-Net v2's torch.compile graphs into a shared cache before training starts.

Layers, lowest first. A module imports from its own layer and the layers below it, never from one above, not
even lazily inside a function (tests/test_layers.py reads every import and fails on one that runs upward):

- values: __init__.py, errors.py, report.py, values/, hooks/
  what travels between the stages (targets, plans, fingerprints, profiles, counters), and the hook a job loads
- storage: cache/, ledger/
  the cache dir (layout, files, checksums, locks, manifests, integrity, trust, findings) and its usage ledger
- operations: pipeline/, lifecycle/, run/, cluster/, service/, demo/
  warm and status; inventory, gc and bundles; running a job; SLURM jobs; the watch service; the demo
- commands: __main__.py, cli/
  one thin module per command
"""

__version__ = "0.1.0"
