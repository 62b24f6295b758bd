"""Wire the stages for one target: replay in a fresh process, verify in another, publish the manifest.

A target that already has a manifest for this fingerprint is re-verified only (seconds, not minutes);
if that verification misses, it is compiled again. A compile replay that missed nothing (every graph was in
the cache already: another target's, or a manifest that was lost) was itself a fresh-process replay with zero
misses, so it stands as the verify. All of it runs under the target's lock. The ranks of
a DDP run are warmed as one group: their replays run at once in one process group, each on its device.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from warmer.cache import integrity
from warmer.cache import manifest as publish
from warmer.cache.layout import CacheDir
from warmer.cache.locking import LockPolicy, target_lock
from warmer.errors import WarmError
from warmer.ledger import records as ledger
from warmer.pipeline import verify
from warmer.pipeline.fingerprint import fingerprint_id, target_fingerprint
from warmer.pipeline.plans import DatasetPlans
from warmer.pipeline.replay import PROGRESS_PREFIX
from warmer.pipeline.targets import Target
from warmer.run.counters import FIELDS

Reporter = Callable[[str], None]


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
    (result,) = run_replays([target], cache, step, report, extra_env, allow_eager, steady_steps)
    return result


def free_local_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_replays(targets: list[Target], cache: CacheDir, step: str, report: Reporter,
                extra_env: dict[str, str] | None = None, allow_eager: bool = False,
                steady_steps: int = 0) -> list[dict[str, Any]]:
    """Replay `targets` at once, one fresh process each; several targets are the ranks of one DDP group.

    When one rank fails the others would wait for it in a collective forever, so they are stopped."""
    env = {**os.environ, **cache.torch_environment(), **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
    if len(targets) > 1:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_local_port()))
    runs = []
    for target in targets:
        scratch = Path(tempfile.mkdtemp(prefix="nnunet-warmer-"))
        (scratch / "spec.json").write_text(json.dumps({"target": target.to_dict(), "allow_eager": allow_eager,
                                                       "steady_steps": steady_steps}))
        log = open(scratch / "replay.log", "w")  # noqa: SIM115 (closed below, after the process)
        process = subprocess.Popen(
            [sys.executable, "-m", "warmer.pipeline.replay", str(scratch / "spec.json"), str(scratch / "result.json")],
            env={**env, "nnUNet_results": str(scratch / "results")}, stdout=log, stderr=subprocess.PIPE, text=True)
        label = f"{step} rank {target.rank}" if len(targets) > 1 else step
        relay = threading.Thread(target=_relay, args=(process, log, label, report), daemon=True)
        relay.start()
        runs.append((target, scratch, process, relay, log))
    while any(process.poll() is None for _, _, process, _, _ in runs):
        if any(process.poll() not in (None, 0) for _, _, process, _, _ in runs):
            for _, _, process, _, _ in runs:
                if process.poll() is None:
                    process.kill()
        time.sleep(0.2)
    results, errors = [], []
    for target, scratch, process, relay, log in runs:
        relay.join()
        log.close()
        result_path = scratch / "result.json"
        result = json.loads(result_path.read_text()) if result_path.exists() else {}
        if process.returncode != 0 or "error" in result or not result:
            error = result.get("error", f"replay exited with code {process.returncode}")
            errors.append(f"{target.label}: {step} failed: {error} (full log: {scratch / 'replay.log'})")
        results.append(result)
    if errors:
        raise WarmError("; ".join(errors))
    for _, scratch, _, _, _ in runs:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def _relay(process: subprocess.Popen[str], log: TextIO, label: str, report: Reporter) -> None:
    """Progress lines go to `report`; everything else the replay writes to stderr goes to its log."""
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith(PROGRESS_PREFIX):
            report(f"{label}: {line[len(PROGRESS_PREFIX):].rstrip()}")
        else:
            log.write(line)


def warm_target(dp: DatasetPlans, target: Target, cache: CacheDir, report: Reporter,
                lock: LockPolicy = LockPolicy()) -> WarmOutcome:  # noqa: B008 (frozen)
    """Warm one single-GPU target (see `warm_group`)."""
    (outcome,) = warm_group(dp, [target], cache, report, lock)
    return outcome


def warm_group(dp: DatasetPlans, group: list[Target], cache: CacheDir, report: Reporter,
               lock: LockPolicy = LockPolicy()) -> list[WarmOutcome]:  # noqa: B008 (frozen)
    """Warm one target, or all ranks of one DDP run together, under their locks (taken in rank order).

    A second warmer waits, then finds the manifests and only verifies."""
    fingerprints = [target_fingerprint(dp, target) for target in group]
    ids = [fingerprint_id(fingerprint) for fingerprint in fingerprints]
    with contextlib.ExitStack() as locks:
        for target, fp_id in zip(group, ids, strict=True):
            lock_path = publish.target_folder(cache, target, cache.locks) / f"{fp_id}.lock"
            locks.enter_context(target_lock(lock_path, lock, report))
        outcomes = _warm_locked(group, cache, report, fingerprints, ids)
    for outcome in outcomes:
        if outcome.state != "no-compile":
            ledger.append_or_warn(cache, outcome.ledger_record(), report)
    return outcomes


def _warm_locked(group: list[Target], cache: CacheDir, report: Reporter, fingerprints: list[dict[str, str]],
                 ids: list[str]) -> list[WarmOutcome]:
    litter = sum(publish.remove_abandoned_temps(publish.target_folder(cache, target)) for target in group)
    if litter:
        report(f"removed {litter} temp files of manifest writes that died mid-write")
    integrity.set_aside(cache, report)
    existing = [publish.matching_manifest(publish.read_manifests(cache, target), fingerprint, fp_id)
                for target, fingerprint, fp_id in zip(group, fingerprints, ids, strict=True)]
    if all(manifest is not None for manifest in existing):
        checks = run_replays(group, cache, "re-verify", report)
        if not any(verify.problems(check["counters"], target.world_size > 1)
                   for target, check in zip(group, checks, strict=True)):
            entries = integrity.entry_checksums(cache)
            return [WarmOutcome(target, "already-warm", "already warm, verified again from a fresh process",
                                manifest.get("cold"), check,
                                str(publish.write_manifest(cache, target, fingerprint, fp_id, None, check,
                                                           previous=manifest, entries=entries)))
                    for target, fingerprint, fp_id, manifest, check
                    in zip(group, fingerprints, ids, existing, checks, strict=True)]
        report("re-verify: the cache no longer hits; compiling again")

    colds = run_replays(group, cache, "compile", report)
    if not all(cold.get("compiles") for cold in colds):
        target = group[0]
        return [WarmOutcome(target, "no-compile",
                            f"{target.trainer} does not use torch.compile on {target.device} (nnU-Net turns it off "
                            f"on CPU, MPS and Windows, and when nnUNet_compile is false): nothing to warm")]
    for target, fingerprint, cold in zip(group, fingerprints, colds, strict=True):
        if cold["fingerprint"] != fingerprint:
            raise WarmError(f"{target.label}: the replay process saw another environment than this one "
                            f"({sorted(k for k in fingerprint if fingerprint[k] != cold['fingerprint'].get(k))})")
    if any(verify.problems(cold["counters"], target.world_size > 1)
           for target, cold in zip(group, colds, strict=True)):
        checks = run_replays(group, cache, "verify", report)
    else:  # every graph came from the cache: that fresh process already proved it warm
        checks = colds
        report("compile: every graph came from the cache, so this replay was the fresh-process verify")
    for target, check in zip(group, checks, strict=True):
        found = verify.problems(check["counters"], target.world_size > 1)
        if found:
            raise WarmError(f"{target.label}: verification from a fresh process saw {', '.join(found)}; "
                            f"nothing was published (rerun with TORCH_LOGS=+inductor to see the cache keys)")
    outcomes, entries = [], integrity.entry_checksums(cache)
    for target, fingerprint, fp_id, cold, check in zip(group, fingerprints, ids, colds, checks, strict=True):
        path = publish.write_manifest(cache, target, fingerprint, fp_id, cold, check, entries=entries)
        message = (f"warm: every graph was in the cache already, verified {sum(check['phases'].values()):.1f} s"
                   if check is cold else f"warm: cold {sum(cold['phases'].values()):.1f} s -> verified "
                   f"{sum(check['phases'].values()):.1f} s ({verify.speedup(cold, check)}x)")
        outcomes.append(WarmOutcome(target, "warm", message, cold, check, str(path)))
    return outcomes
