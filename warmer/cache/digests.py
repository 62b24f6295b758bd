"""Hashes this host has already computed, keyed by each file's identity, so a check reads only what changed.

`watch` checks every target's closure against its manifest on every pass, and `status` the closure of its targets
on every call. Reading every byte each time costs a fleet gigabytes a minute from the shared file system and finds
nothing new. This index records, for each file it hashed, the identity the file had then (device, inode, size,
mtime_ns, ctime_ns) and its "size:sha256". A file whose identity is the same is not read again; any write changes
the size, the mtime or the ctime (`touch -r` restores an mtime, never a ctime), so it is hashed again.

Where it lives: node-local and private to the user, `<scratch>/nnunet-warmer-<uid>/digests/<cache-id>.json`
(scratch as for the node-local copy: $SLURM_TMPDIR, then $TMPDIR, then /tmp). Not in the shared cache: there
every node's every pass would write one file over the network file system, and whoever can write the cache could
vouch for a file they planted in it. Only its user can write a private index.

Many processes of one user may use one index at once: each reads it when it opens it and writes it back by an
atomic rename when it is done, so the last writer wins, and what the other one hashed is hashed again next time.
An index that is missing, garbled or not private is an empty one: it costs a re-hash, never a false result.

What a stat cannot see is damage that keeps all of the identity: bit rot on the disk, or a server that serves other
bytes. So a hash is trusted for `FULL_REHASH_SECONDS` after it was computed, then the file is read again: such damage
goes unseen for at most a day by `watch` and `status`. `check` never uses the index and hashes everything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from warmer.cache.checksums import digest
from warmer.cache.files import FileIdentity, atomic_write_json, file_identity, is_private_folder
from warmer.cache.layout import CacheDir

FULL_REHASH_SECONDS = 86400
INDEX_VERSION = 1
# files looked at side by side: on a network file system each stat is a round trip to the server once the client's
# attribute cache expired (about 1 s), so a pass over 300 targets' closures waits on 14,000 of them
PARALLEL_LOOKS = 16


class DigestIndex:
    """The hashes of one cache's files, as this user on this host last computed them (`path` None: kept in
    memory only, for as long as the process lives)."""

    def __init__(self, path: Path | None, known: dict[str, tuple[FileIdentity, float, str]] | None = None) -> None:
        self.path = path
        self.known = known or {}
        self.hashed = 0
        self._changed = False
        self._lock = threading.Lock()

    @classmethod
    def open(cls, cache: CacheDir, scratch: Path) -> DigestIndex:
        """This user's index of `cache` on this host; an empty one kept in memory when its folder cannot be made
        private to this user."""
        folder = scratch / f"nnunet-warmer-{os.geteuid()}" / "digests"
        if not (_private(folder.parent) and _private(folder)):
            return cls(None)
        cache_id = hashlib.sha256(str(cache.root.resolve()).encode()).hexdigest()[:16]
        path = folder / f"{cache_id}.json"
        return cls(path, _read(path))

    def digest(self, path: Path) -> str:
        """"size:sha256" of `path`, read from the file unless this index holds it for the file's identity now and
        it was computed less than FULL_REHASH_SECONDS ago. FileNotFoundError when it is gone."""
        key, now = str(path), time.time()
        identity = file_identity(os.stat(path))
        held = self.known.get(key)
        if held is not None and held[0] == identity and now - held[1] < FULL_REHASH_SECONDS:
            return held[2]
        value = digest(path)
        with self._lock:
            self.hashed += 1
        if file_identity(os.stat(path)) == identity:  # not written while it was read: the hash is of this identity
            self.known[key] = (identity, now, value)
            self._changed = True
        return value

    def digests(self, paths: list[Path]) -> list[str | None]:
        """`digest` of each path (None for one that is gone), PARALLEL_LOOKS at a time."""
        def one(path: Path) -> str | None:
            try:
                return self.digest(path)
            except FileNotFoundError:
                return None

        if len(paths) < 2:
            return [one(path) for path in paths]
        with ThreadPoolExecutor(max_workers=PARALLEL_LOOKS) as pool:
            return list(pool.map(one, paths))

    def save(self) -> None:
        """Write what this process hashed back to the index (atomically); nothing when nothing new was hashed or
        it lives in memory only. A failed write loses only the new hashes."""
        if self.path is None or not self._changed:
            return
        with contextlib.suppress(OSError):
            atomic_write_json(self.path, {"version": INDEX_VERSION, "files": {
                key: [*identity, hashed_at, value] for key, (identity, hashed_at, value) in self.known.items()}})
            self._changed = False


def _private(folder: Path) -> bool:
    """`folder`, made if missing (0700, whatever the umask: the node-local copy lives beside it and refuses a
    folder others can write), is a real folder of this user that nobody else can write."""
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        return is_private_folder(folder)
    except OSError:
        return False


def _read(path: Path) -> dict[str, tuple[FileIdentity, float, str]]:
    """The index at `path`; empty when it is missing or does not parse."""
    try:
        data = json.loads(path.read_bytes())
        if data.get("version") != INDEX_VERSION:
            return {}
        return {key: ((int(v[0]), int(v[1]), int(v[2]), int(v[3]), int(v[4])), float(v[5]), str(v[6]))
                for key, v in data["files"].items()}
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return {}
