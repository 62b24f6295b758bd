"""What the cache holds, per verified target: its closure's size, what it shares, when a job last used it.

The model `ls` prints and a size-bounded clean-up needs: one `CachedTarget` per manifest, read without compiling
and without hashing (sizes only), and the totals of the cache dir.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from warmer.cache.checksums import cache_entries
from warmer.cache.integrity import manifest_files
from warmer.cache.layout import CacheDir
from warmer.cache.manifest import Manifest, read_manifest_files
from warmer.ledger import records
from warmer.values.fingerprint import HostEnvironment

HereState = Literal["usable", "other-environment", "incomplete"]


@dataclass(frozen=True)
class CachedTarget:
    """One manifest with what `ls` tells about it. `here`: its state on this host (None when not asked);
    `shared_bytes`: the part of its closure that other manifests list too (what removing it would not free);
    `last_used`: the newest `run` of its target on its GPU model."""

    manifest: Manifest
    here: HereState | None
    closure_bytes: int
    shared_bytes: int
    last_used: float | None

    @property
    def unused_since(self) -> float:
        """Its last use, or for a target no job used yet, when it was warmed."""
        if self.last_used is not None:
            return self.last_used
        with contextlib.suppress(ValueError):
            return datetime.strptime(self.manifest.warmed_at, "%Y-%m-%dT%H:%M:%S%z").timestamp()
        try:
            return self.manifest.path.stat().st_mtime
        except FileNotFoundError:
            return time.time()

    @property
    def gpu(self) -> str:
        name = self.manifest.fingerprint.get("gpu_name", "none")
        return "cpu" if name == "none" else name

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {"manifest": str(m.path), "label": m.target.label, "target": m.target.to_dict(), "gpu": self.gpu,
                "torch": m.fingerprint.get("torch", ""), "here": self.here, "closure_bytes": self.closure_bytes,
                "shared_bytes": self.shared_bytes, "files": len(m.entries), "last_used": self.last_used,
                "verified_at": m.verified_at}


@dataclass(frozen=True)
class CacheInventory:
    """Every manifest as a `CachedTarget`, and the cache's totals; `entries`: each cache entry and its size;
    `unlisted`: the entries no readable manifest lists (no verified target loads them: partial compiles, other
    software's entries, what a crash left), what `check` reports and `gc` removes once they are old."""

    root: Path
    targets: list[CachedTarget]
    unreadable_manifests: list[Path]
    cache_bytes: int
    quarantine_bytes: int
    entries: dict[str, int]
    unlisted: dict[str, int]

    @property
    def unlisted_bytes(self) -> int:
        return sum(self.unlisted.values())

    def to_dict(self) -> dict[str, Any]:
        return {"cache_dir": str(self.root), "targets": [t.to_dict() for t in self.targets],
                "unreadable_manifests": [str(p) for p in self.unreadable_manifests], "cache_bytes": self.cache_bytes,
                "unlisted_bytes": self.unlisted_bytes, "quarantine_bytes": self.quarantine_bytes}


def apparent_bytes(folder: Path) -> int:
    """Apparent size of a tree, folders included: what `du -sb` prints (0 when it does not exist)."""
    if not folder.exists():
        return 0
    total = os.lstat(folder).st_size
    for parent, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(parent, name)).st_size
    return total


def _last_runs(cache: CacheDir) -> dict[tuple[str, str, str, str, str], float]:
    """The time of the newest `run` per target key and GPU model, from the ledger."""
    newest: dict[tuple[str, str, str, str, str], float] = {}
    for record in records.records(cache):
        if record.get("kind") != "run" or "dataset" not in record:
            continue
        key = (str(record["dataset"]), str(record.get("plans", "")), str(record.get("configuration", "")),
               str(record.get("trainer", "")), str(record.get("gpu_name") or "cpu"))
        newest[key] = max(newest.get(key, 0.0), float(record.get("time", 0)))
    return newest


def take_inventory(cache: CacheDir, host: HostEnvironment | None = None) -> CacheInventory:
    """Every manifest of the cache with its state on `host` when given, sizes from the files on disk, and last use
    from the ledger."""
    manifests, unreadable = read_manifest_files(manifest_files(cache))
    entries = cache_entries(cache)
    listed_by = Counter(relative for m in manifests for relative in m.entries)
    last_runs = _last_runs(cache)
    targets = []
    for m in manifests:
        sizes = {relative: int(checksum.split(":", 1)[0]) for relative, checksum in m.entries.items()}
        complete = all(entries.get(relative) == size for relative, size in sizes.items())
        state: HereState | None = None
        if host is not None:
            matches = host.differences(m.fingerprint, m.target.device) == []
            state = "incomplete" if not complete else "usable" if matches else "other-environment"
        gpu = m.fingerprint.get("gpu_name", "none")
        key = m.target.key
        last = last_runs.get((key.dataset_name, key.plans_identifier, key.configuration, key.trainer,
                              "cpu" if gpu == "none" else gpu))
        targets.append(CachedTarget(m, state, sum(sizes.values()),
                                    sum(size for relative, size in sizes.items() if listed_by[relative] > 1), last))
    return CacheInventory(cache.root, targets, unreadable, sum(entries.values()), apparent_bytes(cache.quarantine),
                          entries, {relative: size for relative, size in entries.items() if relative not in listed_by})


def age(seconds_since_epoch: float | None, now: float | None = None) -> str:
    """"3 d ago", "5 h ago", "never"."""
    if seconds_since_epoch is None:
        return "never"
    elapsed = (now or time.time()) - seconds_since_epoch
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if elapsed >= length:
            return f"{elapsed / length:.0f} {unit} ago"
    return "just now"
