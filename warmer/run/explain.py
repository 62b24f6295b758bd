"""Say why a wrapped nnU-Net command missed the cache, in one line.

The command's target (dataset, configuration, trainer, plans, device) is read off its arguments. With no
manifest for it the cache was cold, and the line gives the command that warms it. With manifests for
another fingerprint, it names the parts that differ. With a matching manifest, the difference is inside
torch's own keys, and the line points at `TORCH_LOGS=+inductor`, which prints them.
"""

from __future__ import annotations

import shlex
from typing import Any

from warmer.cache.layout import CacheDir
from warmer.cache.status import target_status
from warmer.errors import UserError
from warmer.pipeline.plans import load_plans
from warmer.pipeline.profiles import active_profile
from warmer.pipeline.targets import build_targets


def explain_misses(cache: CacheDir, target: dict[str, str], summary: dict[str, Any]) -> str | None:
    """One line explaining the misses in `summary`, or None when there were none."""
    misses = summary["fx_miss"] + summary["aot_miss"]
    if misses == 0:
        return None
    if not target:
        return f"{misses} cache misses; not an nnU-Net train/predict command, so there is no manifest to compare"
    try:
        dp = load_plans(target["dataset"], target["plans"])
        (resolved,) = build_targets(dp, [target["configuration"]], target["trainer"], [target["device"]])
        status = target_status(dp, resolved, cache)
    except UserError as e:
        return f"{misses} cache misses; cannot compare with a manifest: {e}"
    profile = active_profile()
    warm_command = shlex.join(["nnunet-warmer", "warm", "-d", resolved.dataset_name, "-c", resolved.configuration,
                               "-tr", resolved.trainer, "-p", resolved.plans_identifier, "--device",
                               resolved.device, *(["--shapes", profile] if profile != "default" else []),
                               "--cache-dir", str(cache.root)])
    if status["state"] == "cold":
        return f"the cache was cold for {resolved.label} ({misses} misses): warm it with: {warm_command}"
    if status["state"] == "damaged":
        return f"{misses} misses: {status['differences'][0]}: {warm_command}"
    if status["state"] == "warm":
        return (f"{misses} misses although the manifest's fingerprint matches this environment: rerun with "
                f"TORCH_LOGS=+inductor in both the warmer and the job and diff the cache key components")
    return (f"{misses} misses: the cache was warmed for another environment: "
            f"{'; '.join(status['differences'])}; re-warm with: {warm_command}")
