"""A job's node-local copy of its target's closure: the shared cache is read once and never written by a job.

Torch writes into its cache dir even when every graph hits (lock files, generated code it finds missing, Triton
kernels it unpacks on GPU), so a job cannot run on a cache it may only read. It runs on a copy instead: the files
its target's manifests list, each checked against its manifest's size and SHA-256 while it is copied, so the
pre-job check costs one read of each file, on the first job of the target on this node only.

A file that does not match is read again once after a pause (on a network file system another node may be
replacing it, and a client can serve the old content or ESTALE for about a second); if it still does not match,
it is not copied and the job compiles that graph itself, locally. Nothing is moved in the shared cache.

One copy per user, shared cache and node (`<scratch>/nnunet-warmer-<uid>/<cache-id>/`, private to the user),
shared by that user's jobs on the node (concurrent folds): an index records what was copied and the size and mtime
it had then, so the next job copies only what changed; staging holds a lock on the copy, files appear by rename.
What a job compiles goes into its copy and stays there: it is not published.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from warmer.cache.files import is_private_folder
from warmer.cache.integrity import manifest_files
from warmer.cache.layout import CacheDir
from warmer.cache.manifest import Manifest, read_manifest_files
from warmer.errors import UserError
from warmer.values.targets import TargetKey

SCRATCH_VARIABLES = ("SLURM_TMPDIR", "TMPDIR")
INDEX_NAME = "staged.json"
RETRY_AFTER_SECONDS = 1.5  # longer than a network file system client's attribute and content caching (about 1 s)
_CHUNK = 1 << 20


def default_scratch(environment: dict[str, str]) -> Path:
    """Node-local scratch: $SLURM_TMPDIR (sites that give each job a local folder), then $TMPDIR, then /tmp."""
    return Path(next((environment[v] for v in SCRATCH_VARIABLES if environment.get(v)), "/tmp"))


@dataclass(frozen=True)
class TargetManifests:
    """The manifests of a job's targets as one read found them: those that parse, and the paths of those that do
    not. The job's trust check and its node-local copy both use this one read, so the files checked are the
    files copied."""

    manifests: list[Manifest]
    unreadable: list[Path]

    @property
    def paths(self) -> list[Path]:
        return sorted([*(m.path for m in self.manifests), *self.unreadable])


def read_target_manifests(cache: CacheDir, keys: list[TargetKey]) -> TargetManifests:
    """Every manifest of `keys` (each fingerprint), read once; one that does not parse is read again after a pause:
    on a network file system, one that another node is replacing can read as a stale handle or empty."""
    manifests, unreadable = read_manifest_files(manifest_files(cache, keys))
    if unreadable:
        time.sleep(RETRY_AFTER_SECONDS)
        again, unreadable = read_manifest_files(unreadable)
        manifests += again
    return TargetManifests(manifests, unreadable)


def local_copy_of(shared: CacheDir, scratch: Path) -> CacheDir:
    """Where this user's jobs on this node keep their copy of `shared`."""
    cache_id = hashlib.sha256(str(shared.root.resolve()).encode()).hexdigest()[:16]
    return CacheDir(scratch / f"nnunet-warmer-{os.geteuid()}" / cache_id)


@dataclass(frozen=True)
class StagedCopy:
    """A job's local copy: `files` the manifests list, of which `copied` (`bytes_copied`) were read from the shared
    cache this time, and `rejected`: those that did not match their checksum twice and were not copied."""

    local: CacheDir
    manifests: tuple[Path, ...]
    files: int
    copied: int
    bytes_copied: int
    rejected: tuple[str, ...]
    seconds: float

    def describe(self) -> str:
        reused = self.files - self.copied - len(self.rejected)
        return (f"node-local copy {self.local.root}: {self.copied} files ({self.bytes_copied / 1e6:.1f} MB) copied "
                f"and checked in {self.seconds:.1f} s, {reused} already there, from {len(self.manifests)} manifest(s)")


def _private_folder(folder: Path) -> None:
    """`folder`, made if missing, a real folder of this user that nobody else can write: a copy that someone else
    could have planted files in would run their code in this user's jobs."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        private = is_private_folder(folder)
    except OSError as e:
        raise UserError(f"cannot make the node-local copy in {folder.parent} ({e.strerror}): pass a writable "
                        f"--scratch folder on a local disk") from None
    if not private:
        raise UserError(f"{folder} is not a private folder of this user (a link, someone else's, or writable by "
                        f"others), so a copy there could hold planted code: remove it, or pass another --scratch")


def _copy_checked(source: Path, destination: Path, expected: str) -> bool:
    """Copy `source` to `destination` (by rename) if its bytes have the `expected` "size:sha256"; False if not."""
    size, sha = int(expected.split(":", 1)[0]), hashlib.sha256()
    tmp = destination.with_name(f".{destination.name}.{os.getpid()}.staging")
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        written = 0
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            for block in iter(lambda: src.read(_CHUNK), b""):
                sha.update(block)
                dst.write(block)
                written += len(block)
        if f"{written}:{sha.hexdigest()}" != f"{size}:{expected.split(':', 1)[1]}":
            return False
        os.replace(tmp, destination)
        return True
    except OSError:  # ENOENT or ESTALE while another node replaces it
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _read_index(path: Path) -> dict[str, list]:
    """{relative path: [checksum, size, mtime_ns]} of what was copied; empty if missing or garbled."""
    try:
        index = json.loads(path.read_text())
        return {k: v for k, v in index.items() if isinstance(v, list) and len(v) == 3}
    except (OSError, ValueError, AttributeError):
        return {}


def _still_copied(local: CacheDir, relative: str, expected: str, index: dict[str, list]) -> bool:
    entry = index.get(relative)
    if entry is None or entry[0] != expected:
        return False
    try:
        info = (local.root / relative).stat()
    except FileNotFoundError:
        return False
    return [info.st_size, info.st_mtime_ns] == entry[1:]


def stage(shared: CacheDir, manifests: list[Manifest], scratch: Path) -> StagedCopy:
    """Bring this user's node-local copy of `shared` up to date with the closures of `manifests`."""
    local = local_copy_of(shared, scratch)
    start = time.perf_counter()
    _private_folder(local.root.parent)
    local.root.mkdir(exist_ok=True)
    wanted = {relative: checksum for m in manifests for relative, checksum in m.entries.items()}
    copied, bytes_copied, rejected = 0, 0, []
    with FileLock(str(local.root / "stage.lock")):
        index_path = local.root / INDEX_NAME
        index = _read_index(index_path)
        for relative, expected in sorted(wanted.items()):
            if _still_copied(local, relative, expected, index):
                continue
            source, destination = shared.root / relative, local.root / relative
            if not _copy_checked(source, destination, expected):
                time.sleep(RETRY_AFTER_SECONDS)
                if not _copy_checked(source, destination, expected):
                    rejected.append(relative)
                    continue
            info = destination.stat()
            index[relative] = [expected, info.st_size, info.st_mtime_ns]
            copied += 1
            bytes_copied += info.st_size
        if copied:
            tmp = index_path.with_name(f".{INDEX_NAME}.{os.getpid()}")
            tmp.write_text(json.dumps(index))
            os.replace(tmp, index_path)
    return StagedCopy(local, tuple(m.path for m in manifests), len(wanted), copied, bytes_copied, tuple(rejected),
                      round(time.perf_counter() - start, 3))

