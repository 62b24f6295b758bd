"""Size and SHA-256 of cache entries: what a manifest records at publish time and what `check` compares."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from warmer.cache.layout import CacheDir

_SKIPPED_SUFFIXES = (".lock", ".tmp")


def digest(path: Path) -> str:
    """"size:sha256" of one file."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return f"{path.stat().st_size}:{sha.hexdigest()}"


def entry_checksums(cache: CacheDir) -> dict[str, str]:
    """Size and SHA-256 of every cache entry, keyed by its path relative to the cache dir."""
    sums = {}
    for folder, dirs, files in os.walk(cache.inductor):
        if Path(folder) == cache.inductor and cache.torch_locks.name in dirs:
            dirs.remove(cache.torch_locks.name)
        for name in files:
            path = Path(folder) / name
            if name.endswith(_SKIPPED_SUFFIXES) or cache.torch_locks in path.parents:
                continue
            try:
                sums[str(path.relative_to(cache.root))] = digest(path)
            except FileNotFoundError:  # replaced by another writer meanwhile
                continue
    return sums
