"""Stage 5: run any command (nnUNetv2_train, nnUNetv2_predict) on the cache and report what torch compiled.

The command gets the cache environment plus the hooks on PYTHONPATH; each of its Python processes leaves a
counters record, and the summary adds them up. The command's exit code is returned unchanged. Torch would load
a garbled cache entry and crash the job, so entries that no longer match their manifest's checksums are set
aside before the command starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import warmer
from warmer.cache import integrity
from warmer.cache.layout import CACHE_DIR_VARIABLE, CacheDir
from warmer.errors import UserError
from warmer.ledger import records as ledger
from warmer.ledger.stats import estimated_seconds_saved, nnunet_target_of
from warmer.pipeline.profiles import hooks_pythonpath
from warmer.run import counters
from warmer.run.explain import explain_misses


def probe_environment(records_dir: Path) -> dict[str, str]:
    return {
        "PYTHONPATH": hooks_pythonpath(),
        "NNUNET_WARMER_QUIET": "1",
        "NNUNET_WARMER_PROBE_DIR": str(records_dir),
        "NNUNET_WARMER_PACKAGE_PARENT": str(Path(warmer.__file__).parent.parent),
    }


def run_command(command: list[str], cache: CacheDir, extra_env: dict[str, str] | None = None,
                output: IO[str] | None = None) -> tuple[int, dict[str, Any]]:
    """Run `command` to completion; return its exit code and the summed counters of its processes.

    The command's stdout and stderr go to `output` when given, else to ours.
    """
    with tempfile.TemporaryDirectory(prefix="nnunet-warmer-run-") as records:
        env = {**os.environ, **cache.torch_environment(), **(extra_env or {}), **probe_environment(Path(records))}
        start = time.perf_counter()
        try:
            code = subprocess.call(command, env=env, stdout=output, stderr=output)
        except FileNotFoundError:
            raise UserError(f"command not found: {command[0]}: check the spelling and PATH") from None
        wall = time.perf_counter() - start
        per_process = []
        for path in sorted(Path(records).glob("*.json")):
            try:
                per_process.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
    summary = counters.merge(per_process)
    summary.update(exit_code=code, wall_seconds=round(wall, 3), command=command, cache_dir=str(cache.root),
                   per_process=per_process)
    return code, summary


def _private_cache_if_damaged(cache: CacheDir, report: Callable[[str], None], private: Path) -> dict[str, str]:
    """Keep the job from loading damaged code: quarantine it (the job then compiles those graphs again). A user
    who cannot move it gets the environment of an empty private cache instead, so the job compiles everything."""
    try:
        integrity.set_aside(cache, lambda message: report(f"nnunet-warmer: {message}"))
        return {}
    except PermissionError:
        report(f"nnunet-warmer: the cache has damaged entries and this user cannot move them to quarantine, so "
               f"this job compiles into an empty private cache ({private}) instead of loading them: ask the cache's "
               f"owner to run `nnunet-warmer warm` (it repairs them)")
        return {CACHE_DIR_VARIABLE: str(private)}


def run_and_record(command: list[str], cache: CacheDir, report: Callable[[str], None],
                   output: IO[str] | None = None) -> tuple[int, dict[str, Any]]:
    """`nnunet-warmer run`: set damage aside, run, explain misses, append to the ledger, report the summary."""
    with tempfile.TemporaryDirectory(prefix="nnunet-warmer-private-cache-") as private:
        code, summary = run_command(command, cache, _private_cache_if_damaged(cache, report, Path(private)),
                                    output=output)
    target = nnunet_target_of(command)
    summary["estimated_seconds_saved"] = estimated_seconds_saved(cache, target, summary["compile_seconds"])
    summary["explanation"] = explain_misses(cache, target, summary)
    gpu_names = sorted({p["gpu_name"] for p in summary["per_process"] if p.get("gpu_name")})
    ledger.append_or_warn(cache, {"kind": "run", "command": command, **target, "gpu_name": ", ".join(gpu_names),
                                  **{k: v for k, v in summary.items()
                                     if k not in ("per_process", "command", "cache_dir")}}, report)
    if summary["explanation"]:
        report(f"nnunet-warmer: {summary['explanation']}")
    report(f"nnunet-warmer: {counters.describe(summary)} in {summary['processes']} process(es); "
           f"wall {summary['wall_seconds']:.1f} s; exit code {code}")
    return code, summary
