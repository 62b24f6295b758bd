"""Single flight per target: one warmer compiles, the others wait and then only verify.

One lock per target and environment fingerprint in the shared cache directory, so warmers for other GPU
models or torch builds run in parallel. Two kinds, because shared file systems differ:

- `flock` (default): `filelock.FileLock`, an OS `flock`. The kernel drops it when its holder dies: on
  local disks at once, on NFSv4 when the dead client's lease expires (about 90 s). Lustre must be mounted
  with `-o flock` (without it flock fails with ENOSYS, and the warmer says so).
- `lease`: for file systems without working flock (Lustre without `-o flock`, NFSv3 without lockd). The
  lock is a file created with O_EXCL, which NFS and Lustre create atomically; a thread of the holder
  touches it every quarter lease. A waiter takes it over only when its mtime is older than the lease,
  measured against the file server's clock (a probe file's mtime), so a live holder is never taken over
  and a dead one (SIGKILL, node gone) is after one lease.

The lock saves work; it does not guard correctness. Entries are content-addressed and manifests are
published atomically after a verify, so two warmers that both compile (a lease taken over from a holder
that was only frozen) waste time and corrupt nothing.

One more lock guards correctness: the cache's publish lock. A publish (checksum the closure, write the manifest)
holds it shared, so publishes run in parallel; `gc` holds it exclusive while it drops manifests and deletes the
files no remaining manifest lists. A publish therefore either comes before the deletion (`gc` then sees its
manifest and keeps its files) or after it (its checksums find the files gone, and nothing is published).
With `lease` (no flock on that file system) both kinds are the exclusive lease: publishes then queue.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from filelock import FileLock, Timeout

from warmer.cache.files import server_now
from warmer.errors import UserError
from warmer.report import Reporter

POLL_SECONDS = 5.0
LockKind = Literal["flock", "lease"]
LOCK_KINDS: tuple[LockKind, ...] = ("flock", "lease")
DEFAULT_WAIT_TIMEOUT = 7200.0
DEFAULT_LEASE_SECONDS = 120.0


@dataclass(frozen=True)
class LockPolicy:
    kind: LockKind = "flock"
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    poll_seconds: float = POLL_SECONDS


def _holder_info() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "token": uuid.uuid4().hex}


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"host {info['host']}, pid {info['pid']}, since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "unknown holder"


def _timed_out(waited: float, path: Path, holder_path: Path) -> UserError:
    return UserError(f"lock wait timed out after {waited:.0f} s: another warmer ({_holder(holder_path)}) holds "
                     f"{path}: rerun later or raise --wait-timeout")


@contextlib.contextmanager
def target_lock(lock_path: Path, policy: LockPolicy, report: Reporter) -> Iterator[None]:
    """Hold the target's lock; wait up to `policy.wait_timeout` seconds for another holder, reporting progress."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    if policy.kind == "lease":
        with _lease_lock(lock_path.with_suffix(".lease"), policy, report):
            yield
    else:
        with _flock(lock_path, policy, report):
            yield


@contextlib.contextmanager
def _flock(lock_path: Path, policy: LockPolicy, report: Reporter) -> Iterator[None]:
    holder_path = lock_path.with_suffix(".holder")
    lock = FileLock(str(lock_path))
    start = time.monotonic()
    while True:
        try:
            lock.acquire(timeout=min(policy.poll_seconds, max(policy.wait_timeout - (time.monotonic() - start), 0)))
            break
        except Timeout:
            waited = time.monotonic() - start
            if waited >= policy.wait_timeout:
                raise _timed_out(waited, lock_path, holder_path) from None
            report(f"waiting for another warmer ({_holder(holder_path)}), {waited:.0f} s")
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
                raise UserError(f"the file system of {lock_path} does not support flock ({e.strerror}): mount "
                                f"it with flock support (Lustre: -o flock), or pass --lock lease") from None
            raise
    try:
        holder_path.write_text(json.dumps(_holder_info()))
        yield
    finally:
        with contextlib.suppress(OSError):
            holder_path.unlink()
        lock.release()


def _take_over_if_expired(path: Path, lease_seconds: float) -> bool:
    """Move an expired lease aside (rename is atomic: one waiter wins); True when the path is free now."""
    try:
        age = server_now(path.parent) - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if age <= lease_seconds:
        return False
    aside = path.with_name(f"{path.name}.expired.{socket.gethostname()}.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True
    with contextlib.suppress(OSError):
        aside.unlink()
    return True


@contextlib.contextmanager
def _lease_lock(path: Path, policy: LockPolicy, report: Reporter) -> Iterator[None]:
    info = _holder_info()
    start = time.monotonic()
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            break
        except FileExistsError:
            if _take_over_if_expired(path, policy.lease_seconds):
                report(f"took over an expired lease ({_holder(path)})")
                continue
            waited = time.monotonic() - start
            if waited >= policy.wait_timeout:
                raise _timed_out(waited, path, path) from None
            report(f"waiting for another warmer ({_holder(path)}), {waited:.0f} s")
            time.sleep(min(policy.poll_seconds, max(policy.wait_timeout - waited, 0.05)))
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(policy.lease_seconds / 4):
            with contextlib.suppress(OSError):
                os.utime(path)

    renewer = threading.Thread(target=renew, name="nnunet-warmer-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("token") == info["token"]:
                path.unlink()


@contextlib.contextmanager
def publish_lock(path: Path, policy: LockPolicy, report: Reporter, exclusive: bool) -> Iterator[None]:
    """Hold the cache's publish lock: shared for a publish, exclusive for `gc`'s deletions (see the module's doc)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if policy.kind == "lease":
        with _lease_lock(path.with_suffix(".lease"), policy, report):
            yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        start = time.monotonic()
        reported = 0.0
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if waited >= policy.wait_timeout:
                    raise UserError(f"lock wait timed out after {waited:.0f} s: {path} stayed held (a gc deleting, or "
                                    f"warmers publishing): rerun later or raise --wait-timeout") from None
                if waited - reported >= policy.poll_seconds:
                    reported = waited
                    report(f"waiting for the publish lock ({'a publish' if exclusive else 'a gc'} holds it), "
                           f"{waited:.0f} s")
                time.sleep(0.05)
            except OSError as e:
                if e.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
                    raise UserError(f"the file system of {path} does not support flock ({e.strerror}): mount it "
                                    f"with flock support (Lustre: -o flock), or pass --lock lease") from None
                raise
        yield
    finally:
        os.close(fd)
