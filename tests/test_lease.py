"""`--lock lease`: a dead holder is taken over after one lease, a live one never (it renews its lease)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from warmer.cache.locking import LockPolicy, target_lock
from warmer.errors import UserError

HOLDER = """
import sys, time
from pathlib import Path
from warmer.cache.locking import LockPolicy, target_lock
with target_lock(Path(sys.argv[1]), LockPolicy("lease", 5, float(sys.argv[2]), 0.1), print):
    print("held", flush=True)
    time.sleep(600)
"""


def _start_holder(lock: Path, lease: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), str(lease)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_killed_holder_is_taken_over_after_one_lease(tmp_path: Path) -> None:
    lease = 3.0
    holder = _start_holder(tmp_path / "locks" / "target.lock", lease)
    time.sleep(lease)  # the holder renewed its lease meanwhile
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    killed = time.monotonic()
    messages: list[str] = []
    with target_lock(tmp_path / "locks" / "target.lock", LockPolicy("lease", 30, lease, 0.1), messages.append):
        waited = time.monotonic() - killed
    assert lease * 0.5 <= waited <= lease + 2, waited
    assert any(m.startswith("took over an expired lease") for m in messages), messages
    assert not list((tmp_path / "locks").iterdir()), "released and cleaned up"


def test_a_live_holder_is_never_taken_over(tmp_path: Path) -> None:
    lease = 1.0
    holder = _start_holder(tmp_path / "locks" / "target.lock", lease)
    try:
        with pytest.raises(UserError, match="lock wait timed out"), \
                target_lock(tmp_path / "locks" / "target.lock", LockPolicy("lease", 4 * lease, lease, 0.1), print):
            pytest.fail("took the lock of a live holder")
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()
