"""Bound the shared cache: drop the manifests of the targets unused longest, then delete what no manifest lists.

PyTorch never evicts from its cache dir; every torch build, GPU model and plans change adds to it. `gc` works in
two steps, so that whatever runs meanwhile no manifest ever lists a missing file:

1. plan, reading only: which targets go (unused for more than `unused_for_days`; then, until the cache fits
   `max_size`, never-used targets first, then the least recently used), the bytes that frees (their manifests,
   and the files of their closures no other manifest lists), and the litter: entries in no closure older than the
   grace period (a warm in progress owns younger ones), quarantine folders older than a week, temp files of dead
   writers, and empty folders older than the grace period.
2. delete, holding the publish lock exclusively (publishes hold it shared): the dropped manifests first (one that
   was verified again since the plan stays), then, with every manifest read again, the files of the dropped
   closures that no manifest lists now and that nobody rewrote since the plan, then the litter.

A training job whose target's files go compiles what it misses; a warm whose verified files go before its publish
compiles again. Ages are measured against the file server's clock. Sizes are apparent sizes of files and folders,
as `du -sb` counts them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from warmer.cache.files import TEMP_SUFFIX, abandoned_temps, server_now
from warmer.cache.integrity import listed_entries
from warmer.cache.layout import CacheDir
from warmer.cache.locking import LockPolicy, publish_lock
from warmer.cache.manifest import Manifest, UnreadableManifestError
from warmer.lifecycle.inventory import CachedTarget, apparent_bytes, take_inventory
from warmer.report import Reporter

DAY = 86400.0
DEFAULT_GRACE_DAYS = 1.0
QUARANTINE_DAYS = 7.0
QUARANTINE_NAME_FORMAT = "%Y%m%dT%H%M%S"

DropReason = Literal["unused", "size"]


@dataclass(frozen=True)
class GcPolicy:
    """What to keep: at most `max_size` bytes, no target unused for more than `unused_for_days`; entries in no
    closure are kept while younger than `grace_days`."""

    max_size: int | None = None
    unused_for_days: float | None = None
    grace_days: float = DEFAULT_GRACE_DAYS


@dataclass(frozen=True)
class Drop:
    """A target whose manifest goes, and why."""

    target: CachedTarget
    reason: DropReason

    def to_dict(self) -> dict[str, Any]:
        return {**self.target.to_dict(), "reason": self.reason, "unused_since": self.target.unused_since}


@dataclass(frozen=True)
class Litter:
    """What no verified target needs: entries in no closure, past the grace period (relative path -> bytes);
    quarantine folders older than a week (folder -> bytes); temp files of dead writers; empty folders."""

    stray_entries: dict[str, int]
    old_quarantine: dict[Path, int]
    dead_temps: dict[Path, int]
    empty_folders: dict[Path, int]

    @property
    def bytes(self) -> int:
        return sum(self.stray_entries.values()) + sum(self.old_quarantine.values()) + \
            sum(self.dead_temps.values()) + sum(self.empty_folders.values())

    def to_dict(self) -> dict[str, Any]:
        return {"stray_entries": len(self.stray_entries), "stray_bytes": sum(self.stray_entries.values()),
                "quarantine_folders": [str(p) for p in self.old_quarantine],
                "quarantine_bytes": sum(self.old_quarantine.values()), "temp_files": [str(p) for p in self.dead_temps],
                "empty_folders": len(self.empty_folders)}


@dataclass(frozen=True)
class GcPlan:
    """What `gc` would do, decided from one look at the cache (`started`: that moment on the server's clock)."""

    cache: CacheDir
    policy: GcPolicy
    started: float
    cache_bytes: int
    drops: list[Drop]
    kept: list[CachedTarget]
    frees: dict[str, int]
    litter: Litter
    young_unlisted_bytes: int

    @property
    def projected_bytes(self) -> int:
        return self.cache_bytes - sum(self.frees.values()) - self.litter.bytes

    def to_dict(self) -> dict[str, Any]:
        return {"cache_dir": str(self.cache.root), "max_size": self.policy.max_size,
                "unused_for_days": self.policy.unused_for_days, "grace_days": self.policy.grace_days,
                "cache_bytes": self.cache_bytes, "dropped": [d.to_dict() for d in self.drops],
                "kept": [t.to_dict() for t in self.kept], "dropped_bytes": sum(self.frees.values()),
                "litter": self.litter.to_dict(), "young_unlisted_bytes": self.young_unlisted_bytes,
                "projected_bytes": self.projected_bytes}


@dataclass(frozen=True)
class GcResult:
    """What a `gc` did: the targets it dropped (a target verified again since the plan is not among them), the
    bytes and files it deleted, and the cache's size after."""

    plan: GcPlan
    dropped: list[Drop]
    freed_bytes: int
    deleted_files: int
    cache_bytes_after: int

    @property
    def fits(self) -> bool:
        return self.plan.policy.max_size is None or self.cache_bytes_after <= self.plan.policy.max_size

    def to_dict(self) -> dict[str, Any]:
        return {**self.plan.to_dict(), "dry_run": False, "dropped": [d.to_dict() for d in self.dropped],
                "freed_bytes": self.freed_bytes, "deleted_files": self.deleted_files,
                "cache_bytes_after": self.cache_bytes_after, "fits": self.fits}


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _quarantine_time(folder: Path) -> float | None:
    """When a quarantine folder was made: its name (quarantine/<time>/), else its mtime."""
    try:
        return time.mktime(time.strptime(folder.name, QUARANTINE_NAME_FORMAT))
    except ValueError:
        info = _lstat(folder)
        return info.st_mtime if info else None


def _find_litter(cache: CacheDir, unlisted: dict[str, int], now: float, grace: float) -> tuple[Litter, int]:
    """The litter (see `Litter`) and the bytes of unlisted entries still inside the grace period."""
    stray, young = {}, 0
    for relative, size in unlisted.items():
        info = _lstat(cache.root / relative)
        if info is not None and now - info.st_mtime > grace:
            stray[relative] = size
        elif info is not None:
            young += size
    quarantine = {}
    for folder in sorted(cache.quarantine.iterdir()) if cache.quarantine.is_dir() else []:
        made = _quarantine_time(folder)
        if folder.is_dir() and made is not None and now - made > QUARANTINE_DAYS * DAY:
            quarantine[folder] = apparent_bytes(folder)
    temps = abandoned_temps(cache.ledger)
    empty = {}
    for top in (cache.inductor, cache.manifests):
        for parent, dirs, files in os.walk(top, topdown=False):
            folder = Path(parent)
            if folder == cache.torch_locks or cache.torch_locks in folder.parents:
                continue
            if top == cache.manifests:
                temps += abandoned_temps(folder)
            else:  # torch's own temp files (".<pid>.<thread>.tmp") carry no host: a day-old one is abandoned
                temps += [folder / name for name in files if name.endswith(TEMP_SUFFIX)
                          and (info := _lstat(folder / name)) is not None and now - info.st_mtime > grace]
            info = _lstat(folder)
            if folder != top and not dirs and not files and info is not None and now - info.st_mtime > grace:
                empty[folder] = info.st_size
    dead_temps = {path: info.st_size for path in temps if (info := _lstat(path)) is not None}
    return Litter(stray, quarantine, dead_temps, empty), young


def _drop_order(target: CachedTarget) -> tuple[bool, float, str]:
    """Never-used targets first (the oldest warm first), then the least recently used."""
    return target.last_used is not None, target.unused_since, target.manifest.verified_at


def plan_gc(cache: CacheDir, policy: GcPolicy, report: Reporter) -> GcPlan:
    """Decide what goes, changing nothing."""
    report(f"gc: reading {cache.root}")
    now = server_now(cache.root)
    inventory = take_inventory(cache)
    entries = inventory.entries
    listers = Counter(relative for t in inventory.targets for relative in t.manifest.entries)
    litter, young = _find_litter(cache, inventory.unlisted, now, policy.grace_days * DAY)
    cache_bytes = apparent_bytes(cache.root)
    drops: list[Drop] = []
    frees: dict[str, int] = {}

    def drop(target: CachedTarget, reason: DropReason) -> None:
        drops.append(Drop(target, reason))
        info = _lstat(target.manifest.path)
        frees[str(target.manifest.path.relative_to(cache.root))] = info.st_size if info else 0
        for relative in target.manifest.entries:
            listers[relative] -= 1
            if listers[relative] == 0 and relative in entries:
                frees[relative] = entries[relative]

    remaining = sorted(inventory.targets, key=_drop_order)
    if policy.unused_for_days is not None:
        for target in [t for t in remaining if now - t.unused_since > policy.unused_for_days * DAY]:
            drop(target, "unused")
            remaining.remove(target)
    if policy.max_size is not None:
        while remaining and cache_bytes - sum(frees.values()) - litter.bytes > policy.max_size:
            drop(remaining.pop(0), "size")
    return GcPlan(cache, policy, now, cache_bytes, drops, remaining, frees, litter, young)


def _unlink(path: Path) -> int | None:
    """Delete a file; its size, or None when another process deleted it first."""
    info = _lstat(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return info.st_size if info else 0


def _drop_manifests(plan: GcPlan, report: Reporter) -> tuple[list[Drop], int]:
    """Delete the manifests of the plan's drops that nobody verified again since: those drops, and their bytes."""
    dropped, freed = [], 0
    for drop in plan.drops:
        path = drop.target.manifest.path
        try:
            now = Manifest.read(path)
        except UnreadableManifestError:
            continue  # gone (another gc) or garbled since: `check` and `warm` deal with the latter
        if now.verified_at != drop.target.manifest.verified_at:
            report(f"gc: keeping {drop.target.manifest.target.label}: verified again since this gc started")
            continue
        size = _unlink(path)
        if size is not None:
            dropped.append(drop)
            freed += size
    return dropped, freed


def collect(plan: GcPlan, lock: LockPolicy, report: Reporter) -> GcResult:
    """Carry the plan out (see the module's doc for the order and what is kept)."""
    cache, grace = plan.cache, plan.policy.grace_days * DAY
    with publish_lock(cache.publish_lock, lock, report, exclusive=True):
        dropped, freed = _drop_manifests(plan, report)
        deleted = len(dropped)
        listed = listed_entries(cache)
        closures = {relative for drop in dropped for relative in drop.target.manifest.entries}
        report(f"gc: dropped {len(dropped)} manifest(s); deleting the files no manifest lists")
        for relative in sorted((closures | set(plan.litter.stray_entries)) - listed):
            path = cache.root / relative
            info = _lstat(path)
            if info is None or info.st_mtime > plan.started or \
                    (relative not in closures and plan.started - info.st_mtime <= grace):
                continue  # written again since the plan (a compile in progress owns it)
            size = _unlink(path)
            if size is not None:
                freed, deleted = freed + size, deleted + 1
        for path in plan.litter.dead_temps:
            size = _unlink(path)
            if size is not None:
                freed, deleted = freed + size, deleted + 1
        for folder, size in plan.litter.old_quarantine.items():
            files = sum(1 for p in folder.rglob("*") if not p.is_dir())
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                freed, deleted = freed + size, deleted + files
        for folder, size in plan.litter.empty_folders.items():
            try:
                folder.rmdir()
            except OSError:
                continue  # not empty any more, or gone
            freed += size
    return GcResult(plan, dropped, freed, deleted, apparent_bytes(cache.root))
