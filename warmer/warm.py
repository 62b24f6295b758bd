"""Wire the stages for one target: replay in a fresh process, verify in another, publish the manifest.

A target that already has a manifest for this fingerprint is re-verified only (seconds, not minutes);
if that verification misses, it is compiled again. All of it runs under the target's lock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmer import ledger, publish, verify
from warmer.cachedir import CacheDir
from warmer.counters import FIELDS
from warmer.errors import WarmError
from warmer.fingerprint import fingerprint_id, target_fingerprint
from warmer.locking import target_lock
from warmer.plans import DatasetPlans, Target
from warmer.replay import PROGRESS_PREFIX

Reporter = Callable[[str], None]
DEFAULT_WAIT_TIMEOUT = 7200.0


@dataclass
class WarmOutcome:
    target: Target
    state: str  # "warm", "already-warm", "no-compile"
    message: str
    cold: dict[str, Any] | None = None
    verify: dict[str, Any] | None = None
    manifest: str | None = None

    def ledger_record(self) -> dict[str, Any]:
        replay = (self.cold if self.state == "warm" else self.verify) or {}
        counts = replay.get("counters", {})
        gpu_name = replay.get("fingerprint", {}).get("gpu_name", "none")
        t = self.target
        return {"kind": "warm", "state": self.state, "dataset": t.dataset_name, "configuration": t.configuration,
                "trainer": t.trainer, "plans": t.plans_identifier, "batch_per_rank": t.batch_per_rank,
                "device": t.device, "gpu_name": "" if gpu_name == "none" else gpu_name,
                **{k: counts.get(k, 0) for k in FIELDS}, "compile_seconds": counts.get("compile_seconds", 0.0),
                "wall_seconds": replay.get("wall_seconds", 0.0)}

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target.to_dict(), "label": self.target.label, "state": self.state,
                "message": self.message, "cold": self.cold, "verify": self.verify, "manifest": self.manifest}


def run_replay(target: Target, cache: CacheDir, step: str, report: Reporter,
               extra_env: dict[str, str] | None = None, allow_eager: bool = False,
               steady_steps: int = 0) -> dict[str, Any]:
    """One replay of `target` in a fresh Python process; returns its result record.

    `allow_eager` and `steady_steps` (extra train steps, timed) are for the benchmarks."""
    scratch = Path(tempfile.mkdtemp(prefix="nnunet-warmer-"))
    spec_path, result_path, log_path = scratch / "spec.json", scratch / "result.json", scratch / "replay.log"
    spec_path.write_text(json.dumps({"target": target.to_dict(), "allow_eager": allow_eager,
                                     "steady_steps": steady_steps}))
    env = {**os.environ, **cache.torch_environment(), **(extra_env or {}),
           "nnUNet_results": str(scratch / "results"), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "warmer.replay", str(spec_path), str(result_path)],
                                   env=env, stdout=log, stderr=subprocess.PIPE, text=True)
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith(PROGRESS_PREFIX):
                report(f"{step}: {line[len(PROGRESS_PREFIX):].rstrip()}")
            else:
                log.write(line)
        code = process.wait()
    result: dict[str, Any] = {}
    if result_path.exists():
        result = json.loads(result_path.read_text())
    if code != 0 or "error" in result or not result:
        error = result.get("error", f"replay exited with code {code}")
        raise WarmError(f"{target.label}: {step} failed: {error} (full log: {log_path})")
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def warm_target(dp: DatasetPlans, target: Target, cache: CacheDir, report: Reporter,
                wait_timeout: float = DEFAULT_WAIT_TIMEOUT) -> WarmOutcome:
    """Warm one target under its lock: a second warmer waits, then finds the manifest and only verifies."""
    fingerprint = target_fingerprint(dp, target)
    fp_id = fingerprint_id(fingerprint)
    lock_path = publish.target_folder(cache, target, cache.locks) / f"{fp_id}.lock"
    with target_lock(lock_path, wait_timeout, report):
        outcome = _warm_locked(target, cache, report, fingerprint, fp_id)
    if outcome.state != "no-compile":
        ledger.append_or_warn(cache, outcome.ledger_record(), report)
    return outcome


def _warm_locked(target: Target, cache: CacheDir, report: Reporter, fingerprint: dict[str, str],
                 fp_id: str) -> WarmOutcome:
    existing = publish.matching_manifest(publish.read_manifests(cache, target), fingerprint, fp_id)
    if existing is not None:
        check = run_replay(target, cache, "re-verify", report)
        if not verify.problems(check["counters"]):
            path = publish.write_manifest(cache, target, fingerprint, fp_id, None, check, previous=existing)
            return WarmOutcome(target, "already-warm", "already warm, verified again from a fresh process",
                               existing.get("cold"), check, str(path))
        report("re-verify: the cache no longer hits; compiling again")

    cold = run_replay(target, cache, "compile", report)
    if not cold.get("compiles"):
        return WarmOutcome(target, "no-compile",
                           f"{target.trainer} does not use torch.compile on {target.device} (nnU-Net turns it off "
                           f"on CPU, MPS and Windows, and when nnUNet_compile is false): nothing to warm")
    if cold["fingerprint"] != fingerprint:
        raise WarmError(f"{target.label}: the replay process saw another environment than this one "
                          f"({sorted(k for k in fingerprint if fingerprint[k] != cold['fingerprint'].get(k))})")
    check = run_replay(target, cache, "verify", report)
    found = verify.problems(check["counters"])
    if found:
        raise WarmError(f"{target.label}: verification from a fresh process saw {', '.join(found)}; "
                          f"nothing was published (rerun with TORCH_LOGS=+inductor to see the cache keys)")
    path = publish.write_manifest(cache, target, fingerprint, fp_id, cold, check)
    ratio = verify.speedup(cold, check)
    return WarmOutcome(target, "warm", f"warm: cold {sum(cold['phases'].values()):.1f} s -> verified "
                       f"{sum(check['phases'].values()):.1f} s ({ratio}x)", cold, check, str(path))
