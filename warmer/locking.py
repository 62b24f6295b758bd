"""Single flight per target: one warmer compiles, the others wait and then only verify.

The lock is a `filelock.FileLock` (an OS `flock`) in the shared cache directory, one per target and
environment fingerprint, so warmers for other GPU models or torch builds run in parallel. The kernel
drops an `flock` when its holder dies, so a killed warmer never leaves a stale lock behind: on local
disks at once, on NFSv4 when the dead client's lease expires. Lustre must be mounted with `-o flock`
(without it flock fails with ENOSYS, and the warmer says so).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from warmer.errors import UserError

POLL_SECONDS = 5.0


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"host {info['host']}, pid {info['pid']}, since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "unknown holder"


@contextlib.contextmanager
def target_lock(lock_path: Path, wait_timeout: float, report: Callable[[str], None]) -> Iterator[None]:
    """Hold the target's lock; wait up to `wait_timeout` seconds for another holder, reporting progress."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    holder_path = lock_path.with_suffix(".holder")
    lock = FileLock(str(lock_path))
    start = time.monotonic()
    while True:
        try:
            lock.acquire(timeout=min(POLL_SECONDS, max(wait_timeout - (time.monotonic() - start), 0)))
            break
        except Timeout:
            waited = time.monotonic() - start
            if waited >= wait_timeout:
                raise UserError(f"lock wait timed out after {waited:.0f} s: another warmer ({_holder(holder_path)}) "
                                f"holds {lock_path}: rerun later or raise --wait-timeout") from None
            report(f"waiting for another warmer ({_holder(holder_path)}), {waited:.0f} s")
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
                raise UserError(f"the file system of {lock_path} does not support flock ({e.strerror}): mount "
                                f"it with flock support (Lustre: -o flock) or pass another --cache-dir") from None
            raise
    try:
        holder_path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                           "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        yield
    finally:
        with contextlib.suppress(OSError):
            holder_path.unlink()
        lock.release()
