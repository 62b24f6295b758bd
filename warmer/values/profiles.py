"""Shape profiles: how torch.compile treats shapes, applied the same way in the warmer and in training.

- `default`: exactly what plain nnU-Net does. Dynamo's automatic dynamic shapes turn the second shape a
  compiled function sees into a symbolic-shape graph (the dice loss over deep-supervision scales, the
  network when the final validation switches to batch-1 tiles).
- `static`: automatic dynamic shapes off and a recompile limit high enough for every deep-supervision scale
  in train and eval mode, so every call gets its own fixed-shape graph. The recompile limit has no
  environment variable: the hook in `warmer/hooks` sets it in every Python process that imports torch.

A profile is a set of environment variables. `JobEnvironment` is the environment every process of a warm or a
training job starts with (this process's, plus the profile's); the stages take it as an argument, and nothing
writes it into `os.environ`, so the fingerprint, the replay subprocesses and the wrapped training command all
see the same settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, cast

from warmer.hooks.nnunet_warmer_hook_variables import HOOKS_DIR, RECOMPILE_LIMIT

Profile = Literal["default", "static"]
PROFILES: tuple[Profile, ...] = ("default", "static")
AUTOMATIC_DYNAMIC_VARIABLE = "TORCH_DYNAMO_AUTOMATIC_DYNAMIC_SHAPES"
STATIC_RECOMPILE_LIMIT = 64
#: where torch keeps its compile cache, and the switches that keep its FX and AOTAutograd caches on
CACHE_DIR_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"
CACHE_SWITCHES = {"TORCHINDUCTOR_FX_GRAPH_CACHE": "1", "TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}


def hooks_pythonpath(current: str) -> str:
    """PYTHONPATH with the hooks folder first (once), keeping what `current` had."""
    entries = [HOOKS_DIR] + [p for p in current.split(os.pathsep) if p and p != HOOKS_DIR]
    return os.pathsep.join(entries)


def profile_environment(profile: str, pythonpath: str = "") -> dict[str, str]:
    """The variables that select `profile` on top of an environment whose PYTHONPATH is `pythonpath`; the
    default profile changes nothing."""
    if profile == "default":
        return {}
    if profile == "static":
        return {AUTOMATIC_DYNAMIC_VARIABLE: "0", RECOMPILE_LIMIT: str(STATIC_RECOMPILE_LIMIT),
                "PYTHONPATH": hooks_pythonpath(pythonpath)}
    raise ValueError(f"unknown shapes profile {profile}")


@dataclass(frozen=True, eq=False)
class JobEnvironment:
    """The environment each process of a warm or a training job starts with."""

    variables: Mapping[str, str]

    @classmethod
    def with_profile(cls, profile: str, base: Mapping[str, str] | None = None) -> JobEnvironment:
        """`base` (default: this process's environment) with the variables of the shapes profile."""
        base = dict(os.environ if base is None else base)
        return cls(MappingProxyType({**base, **profile_environment(profile, base.get("PYTHONPATH", ""))}))

    def get(self, name: str, default: str = "") -> str:
        return self.variables.get(name, default)

    @property
    def automatic_dynamic_shapes(self) -> bool:
        """What torch's `automatic_dynamic_shapes` will be in the job's processes (torch reads the variable
        at import; the replay process reports torch's own value, and the warm compares the two)."""
        return self.get(AUTOMATIC_DYNAMIC_VARIABLE, "1") == "1"

    @property
    def profile(self) -> Profile:
        """The profile this environment selects (what a training job started from it would do)."""
        return cast(Profile, "static" if self.get(AUTOMATIC_DYNAMIC_VARIABLE) == "0" else "default")
