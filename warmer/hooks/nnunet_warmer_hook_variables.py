"""The variables that configure `sitecustomize.py` in a job's processes, named once for the hook and the warmer.

This folder goes on a job's PYTHONPATH, so the hook imports this module by its top-level name; the warmer imports it
as `warmer.hooks.nnunet_warmer_hook_variables`. Standard library only.
"""

import os

HOOKS_DIR = os.path.dirname(os.path.abspath(__file__))
#: dynamo's recompile limit, set after torch is imported (it has no environment variable of its own)
RECOMPILE_LIMIT = "NNUNET_WARMER_RECOMPILE_LIMIT"
#: folder where each process writes torch.compile's counters at exit
PROBE_DIR = "NNUNET_WARMER_PROBE_DIR"
#: "1": drop the two messages every nnU-Net job prints that say nothing about the job
QUIET = "NNUNET_WARMER_QUIET"
#: the folder that holds the `warmer` package, so the hook can import its counters
PACKAGE_PARENT = "NNUNET_WARMER_PACKAGE_PARENT"
