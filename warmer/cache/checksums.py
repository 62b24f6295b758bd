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


def closure_checksums(cache: CacheDir, closure: tuple[str, ...]) -> dict[str, str]:
    """Size and SHA-256 of each file of a closure (paths relative to the cache dir); a file that vanished since
    the replay saw it (another warmer's quarantine) raises FileNotFoundError: nothing may be published then."""
    return {relative: digest(cache.root / relative) for relative in closure}


def cache_entries(cache: CacheDir) -> dict[str, int]:
    """Every cache entry under `inductor/` (torch's locks and temp files aside) with its size, keyed by its path
    relative to the cache dir."""
    sizes = {}
    for folder, dirs, files in os.walk(cache.inductor):
        if Path(folder) == cache.inductor and cache.torch_locks.name in dirs:
            dirs.remove(cache.torch_locks.name)
        for name in files:
            path = Path(folder) / name
            if name.endswith(_SKIPPED_SUFFIXES):
                continue
            try:
                sizes[str(path.relative_to(cache.root))] = path.stat().st_size
            except FileNotFoundError:  # replaced by another writer meanwhile
                continue
    return sizes
