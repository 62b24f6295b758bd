"""Say why a wrapped nnU-Net command missed the cache, in one line.

The command's target (dataset, configuration, trainer, plans, device) is read off its arguments. With no
manifest for it the cache was cold, and the line gives the command that warms it. With manifests for
another fingerprint, it names the parts that differ. With a matching manifest, the difference is inside
torch's own keys, and the line points at `TORCH_LOGS=+inductor`, which prints them.
"""

from __future__ import annotations

import shlex

from warmer.cache.layout import CacheDir
from warmer.errors import UserError
from warmer.pipeline.status import target_status
from warmer.run.command import NnunetCommand
from warmer.values.counters import Counters
from warmer.values.plans import load_plans
from warmer.values.profiles import JobEnvironment
from warmer.values.targets import build_targets


def explain_misses(cache: CacheDir, command: NnunetCommand | None, counters: Counters,
                   environment: JobEnvironment) -> str | None:
    """One line explaining the misses in `counters`, or None when there were none."""
    misses = counters.misses
    if misses == 0:
        return None
    if command is None:
        return f"{misses} cache misses; not an nnU-Net train/predict command, so there is no manifest to compare"
    key = command.key
    try:
        dp = load_plans(key.dataset_name, key.plans_identifier)
        (resolved,) = build_targets(dp, [key.configuration], key.trainer, [command.device])
        status = target_status(dp, resolved, cache, environment)
    except UserError as e:
        return f"{misses} cache misses; cannot compare with a manifest: {e}"
    profile = environment.profile
    warm_command = shlex.join(["nnunet-warmer", "warm", "-d", resolved.dataset_name, "-c", resolved.configuration,
                               "-tr", resolved.trainer, "-p", resolved.plans_identifier, "--device",
                               resolved.device, *(["--shapes", profile] if profile != "default" else []),
                               "--cache-dir", str(cache.root)])
    if status.state == "cold":
        return f"the cache was cold for {resolved.label} ({misses} misses): warm it with: {warm_command}"
    if status.state == "damaged":
        return f"{misses} misses: {status.differences[0]}: {warm_command}"
    if status.state == "warm":
        return (f"{misses} misses although the manifest's fingerprint matches this environment: rerun with "
                f"TORCH_LOGS=+inductor in both the warmer and the job and diff the cache key components")
    return (f"{misses} misses: the cache was warmed for another environment: "
            f"{'; '.join(status.differences)}; re-warm with: {warm_command}")
