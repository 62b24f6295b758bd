"""Single flight per target: concurrent warmers compile once; a held lock times out with a clear error."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from filelock import FileLock

from warmer import CPU_TRAINERS_DIR
from warmer.cachedir import CacheDir
from warmer.fingerprint import fingerprint_id, target_fingerprint
from warmer.plans import build_targets, load_plans
from warmer.publish import target_folder

from .conftest import BIN, CPU_TRAINER

WARMERS = 4


def _warm_args(cache: Path, *extra: str) -> list[str]:
    return [str(BIN / "nnunet-warmer"), "warm", "-d", "990", "-c", "3d_fullres", "-tr", CPU_TRAINER,
            "--device", "cpu", "--cache-dir", str(cache), *extra]


@pytest.mark.e2e
def test_concurrent_warmers_compile_once(nnunet_env, tmp_path: Path) -> None:
    cache = tmp_path / "shared-cache"
    env = {**os.environ, "nnUNet_extTrainer": str(CPU_TRAINERS_DIR)}
    processes = [subprocess.Popen(_warm_args(cache, "--json"), env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(WARMERS)]
    outputs = [p.communicate(timeout=1200) for p in processes]
    assert [p.returncode for p in processes] == [0] * WARMERS, [err[-2000:] for _, err in outputs]
    outcomes = [json.loads(out)["targets"][0] for out, _ in outputs]
    states = sorted(o["state"] for o in outcomes)
    assert states == ["already-warm"] * (WARMERS - 1) + ["warm"], states
    compiled = next(o for o in outcomes if o["state"] == "warm")
    fx_misses = [o["verify"]["counters"]["fx_miss"] for o in outcomes]
    assert compiled["cold"]["counters"]["fx_miss"] > 0 and fx_misses == [0] * WARMERS
    assert any("waiting for another warmer" in err for _, err in outputs)


def test_lock_wait_timeout_is_a_one_line_error(nnunet_env, tmp_path: Path) -> None:
    cache = CacheDir(tmp_path / "cache")
    dp = load_plans("990")
    (target,) = build_targets(dp, ["3d_fullres"], CPU_TRAINER, ["cpu"])
    lock_path = target_folder(cache, target, cache.locks) / f"{fingerprint_id(target_fingerprint(dp, target))}.lock"
    lock_path.parent.mkdir(parents=True)
    env = {**os.environ, "nnUNet_extTrainer": str(CPU_TRAINERS_DIR)}
    with FileLock(str(lock_path)):
        result = subprocess.run(_warm_args(cache.root, "--wait-timeout", "1"), env=env, capture_output=True,
                                text=True, timeout=300)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("nnunet-warmer: error: lock wait timed out") and "--wait-timeout" in last
    assert not (cache.root / "manifests").exists()
