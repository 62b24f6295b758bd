"""Single flight per target: concurrent warmers compile once; a held lock times out with a clear error."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from filelock import FileLock

from warmer.cache.layout import CacheDir

from .helpers import CONCURRENT_WARMERS, lock_path, warm_command


@pytest.mark.e2e
def test_concurrent_warmers_compile_once(concurrently_warmed) -> None:
    cache, outputs = concurrently_warmed
    assert [code for code, _, _ in outputs] == [0] * CONCURRENT_WARMERS, [err[-2000:] for _, _, err in outputs]
    outcomes = [json.loads(out)["targets"][0] for _, out, _ in outputs]
    states = sorted(o["state"] for o in outcomes)
    assert states == ["already-warm"] * (CONCURRENT_WARMERS - 1) + ["warm"], states
    compiled = next(o for o in outcomes if o["state"] == "warm")
    fx_misses = [o["verify"]["counters"]["fx_miss"] for o in outcomes]
    assert compiled["cold"]["counters"]["fx_miss"] > 0 and fx_misses == [0] * CONCURRENT_WARMERS
    assert any("waiting for another warmer" in err for _, _, err in outputs)


def test_lock_wait_timeout_is_a_one_line_error(nnunet_env, tmp_path: Path) -> None:
    cache = CacheDir(tmp_path / "cache")
    held = lock_path(cache.root, "3d_fullres")
    held.parent.mkdir(parents=True)
    with FileLock(str(held)):
        result = subprocess.run(warm_command(cache.root, "3d_fullres", "--wait-timeout", "1"),
                                capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("nnunet-warmer: error: lock wait timed out") and "--wait-timeout" in last
    assert not (cache.root / "manifests").exists()
