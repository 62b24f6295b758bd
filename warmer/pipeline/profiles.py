"""Shape profiles: how torch.compile treats shapes, applied the same way in the warmer and in training.

- `default`: exactly what plain nnU-Net does. Dynamo's automatic dynamic shapes turn the second shape a
  compiled function sees into a symbolic-shape graph (the dice loss over deep-supervision scales, the
  network when the final validation switches to batch-1 tiles).
- `static`: automatic dynamic shapes off and a recompile limit high enough for every deep-supervision scale
  in train and eval mode, so every call gets its own fixed-shape graph. The recompile limit has no
  environment variable: the hook in `warmer/run/hooks` sets it in every Python process that imports torch.

`cli` applies the chosen profile to its own environment before torch is imported, so the fingerprint, the
replay subprocesses and the wrapped training command all see the same settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PROFILES = ("default", "static")
AUTOMATIC_DYNAMIC_VARIABLE = "TORCH_DYNAMO_AUTOMATIC_DYNAMIC_SHAPES"
RECOMPILE_LIMIT_VARIABLE = "NNUNET_WARMER_RECOMPILE_LIMIT"
STATIC_RECOMPILE_LIMIT = 64
HOOKS_DIR = Path(__file__).parent.parent / "run" / "hooks"


def hooks_pythonpath(current: str | None = None) -> str:
    """PYTHONPATH with the hooks folder first (once), keeping what the environment had."""
    current = os.environ.get("PYTHONPATH", "") if current is None else current
    entries = [str(HOOKS_DIR)] + [p for p in current.split(os.pathsep) if p and p != str(HOOKS_DIR)]
    return os.pathsep.join(entries)


def profile_environment(profile: str) -> dict[str, str]:
    """The variables that select `profile`; the default profile changes nothing."""
    if profile == "default":
        return {}
    if profile == "static":
        return {AUTOMATIC_DYNAMIC_VARIABLE: "0", RECOMPILE_LIMIT_VARIABLE: str(STATIC_RECOMPILE_LIMIT),
                "PYTHONPATH": hooks_pythonpath()}
    raise ValueError(f"unknown shapes profile {profile}")


def active_profile(environ: Mapping[str, str] = os.environ) -> str:
    """The profile the environment selects (what a training job started from it would do)."""
    return "static" if environ.get(AUTOMATIC_DYNAMIC_VARIABLE) == "0" else "default"

