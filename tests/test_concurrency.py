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


def test_the_lock_file_outlives_its_holders(tmp_path: Path) -> None:
    """The target lock is a flock on one file that stays, one inode for every holder: a lock file unlinked on
    release lets a waiter on another network-file-system client, whose cache still shows the old file, lock
    another inode than the next holder's."""
    from warmer.cache.locking import LockPolicy, target_lock

    path = tmp_path / "locks" / "target.lock"
    with target_lock(path, LockPolicy(), lambda _: None):
        first = path.stat().st_ino
    assert path.exists(), "the lock file went with its holder"
    with target_lock(path, LockPolicy(), lambda _: None):
        assert path.stat().st_ino == first
    assert path.exists()
