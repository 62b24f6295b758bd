"""Say why a wrapped nnU-Net command missed the cache, in one line.

The command's target (dataset, configuration, trainer, plans, device) is read off its arguments. With no
manifest for it the cache was cold, and the line gives the command that warms it. With manifests for
another fingerprint, it names the parts that differ. With a matching manifest, the difference is inside
torch's own keys, and the line points at `TORCH_LOGS=+inductor`, which prints them.
"""

from __future__ import annotations

import shlex
from typing import Any

from warmer import publish
from warmer.cachedir import CacheDir
from warmer.errors import UserError
from warmer.fingerprint import differences, fingerprint_id, target_fingerprint
from warmer.plans import build_targets, load_plans


def _device_of(command: list[str]) -> str:
    if "-device" in command[:-1]:
        device = command[command.index("-device") + 1]
        return "cuda:0" if device == "cuda" else device
    return "cuda:0"


def explain_misses(cache: CacheDir, command: list[str], target: dict[str, str], summary: dict[str, Any]) -> str | None:
    """One line explaining the misses in `summary`, or None when there were none."""
    misses = summary["fx_miss"] + summary["aot_miss"]
    if misses == 0:
        return None
    if not target:
        return f"{misses} cache misses; not an nnU-Net train/predict command, so there is no manifest to compare"
    try:
        dp = load_plans(target["dataset"], target["plans"])
        (resolved,) = build_targets(dp, [target["configuration"]], target["trainer"], _device_of(command))
        fingerprint = target_fingerprint(dp, resolved)
    except UserError as e:
        return f"{misses} cache misses; cannot compare with a manifest: {e}"
    manifests = publish.read_manifests(cache, resolved)
    warm_command = shlex.join(["nnunet-warmer", "warm", "-d", resolved.dataset_name, "-c", resolved.configuration,
                               "-tr", resolved.trainer, "-p", resolved.plans_identifier, "--device",
                               resolved.device, "--cache-dir", str(cache.root)])
    if not manifests:
        return f"the cache was cold for {resolved.label} ({misses} misses): warm it with: {warm_command}"
    fp_id = fingerprint_id(fingerprint)
    if any(m.get("fingerprint_id") == fp_id for m in manifests):
        return (f"{misses} misses although the manifest's fingerprint matches this environment: rerun with "
                f"TORCH_LOGS=+inductor in both the warmer and the job and diff the cache key components")
    closest = min(manifests, key=lambda m: len(differences(m["fingerprint"], fingerprint)))
    return (f"{misses} misses: the cache was warmed for another environment: "
            f"{'; '.join(differences(closest['fingerprint'], fingerprint))}; re-warm with: {warm_command}")
