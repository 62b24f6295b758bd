"""Find damaged cache entries without compiling, and move them out of the way before anything loads them.

Every manifest records the size and SHA-256 of each file under `inductor/` when it was published (torch's
own lock files aside). `check` compares them with what is there now: a truncated or garbled FX entry,
AOTAutograd entry, kernel `.so`, generated code or Triton file no longer matches, and a garbled manifest
does not parse. `warm` moves damaged entries to `quarantine/` first, so its re-verify misses and it
compiles them again; `run` does the same before its job starts (torch crashes a job that imports a garbled
generated file), so jobs load only entries a verify has seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from warmer.cache.layout import CacheDir

_SKIPPED_SUFFIXES = (".lock", ".tmp")


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return f"{path.stat().st_size}:{sha.hexdigest()}"


def entry_checksums(cache: CacheDir) -> dict[str, str]:
    """Size and SHA-256 of every cache entry, keyed by its path relative to the cache dir."""
    sums = {}
    locks = cache.inductor / "locks"
    for folder, dirs, files in os.walk(cache.inductor):
        if Path(folder) == cache.inductor and "locks" in dirs:
            dirs.remove("locks")
        for name in files:
            path = Path(folder) / name
            if name.endswith(_SKIPPED_SUFFIXES) or locks in path.parents:
                continue
            try:
                sums[str(path.relative_to(cache.root))] = _digest(path)
            except FileNotFoundError:  # replaced by another writer meanwhile
                continue
    return sums


def _entry_problem(cache: CacheDir, relative: str, expected: str, digests: dict[str, str]) -> str | None:
    """"missing", "altered" or None for one listed entry; `digests` keeps each file's hash for the next
    manifest that lists it (every manifest lists the whole tree)."""
    path = cache.root / relative
    if not path.exists():
        return "missing"
    if relative not in digests:
        digests[relative] = _digest(path)
    return "altered" if digests[relative] != expected else None


def manifest_damage(cache: CacheDir, manifest: dict[str, Any]) -> list[str]:
    """The entries of one manifest that are missing or no longer match their checksum."""
    digests: dict[str, str] = {}
    return [str(cache.root / relative) for relative, expected in dict(manifest.get("entries") or {}).items()
            if _entry_problem(cache, relative, expected, digests)]


def damaged_entries(cache: CacheDir) -> list[dict[str, str]]:
    """Each damaged file once, as {"path", "problem"}, and every manifest that lists one (its target is no
    longer proven warm); empty when every manifest's entries are intact."""
    found: dict[str, str] = {}
    manifests: dict[Path, dict[str, str]] = {}
    for manifest_path in sorted(cache.manifests.rglob("*.json")) if cache.manifests.is_dir() else []:
        try:
            manifests[manifest_path] = dict(json.loads(manifest_path.read_text()).get("entries") or {})
        except (OSError, ValueError, TypeError, AttributeError):
            found[str(manifest_path)] = "manifest does not parse"
    digests: dict[str, str] = {}
    for manifest_path, entries in manifests.items():
        for relative, expected in entries.items():
            path = str(cache.root / relative)
            problem = None if path in found else _entry_problem(cache, relative, expected, digests)
            if problem == "missing":
                found[path] = f"missing (listed by {manifest_path.name})"
            elif problem == "altered":
                found[path] = f"size or checksum differs from {manifest_path.name} (truncated or garbled)"
    damaged = {str(Path(p).relative_to(cache.root)) for p in found}
    for manifest_path, entries in manifests.items():
        if damaged & set(entries):
            found[str(manifest_path)] = "lists damaged entries: its target is no longer proven warm"
    return [{"path": path, "problem": problem} for path, problem in found.items()]


def quarantine(cache: CacheDir, damaged: list[dict[str, str]]) -> tuple[Path, int] | None:
    """Move the damaged files that exist under quarantine/<time>/, keeping their paths; returns the folder and
    how many files went there, None if none did. A file another process moved first is skipped."""
    target = cache.root / "quarantine" / time.strftime("%Y%m%dT%H%M%S")
    moved = 0
    for item in damaged:
        path = Path(item["path"])
        if not path.exists():  # listed but missing: nothing to move
            continue
        destination = target / path.relative_to(cache.root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, destination)
        except FileNotFoundError:
            continue
        moved += 1
    return (target, moved) if moved else None


def set_aside(cache: CacheDir, report: Callable[[str], None]) -> None:
    """Quarantine what `damaged_entries` finds, so nothing loads it again, and say what moved where."""
    moved = quarantine(cache, damaged_entries(cache))
    if moved is not None:
        folder, count = moved
        report(f"moved {count} damaged files (cache entries and the manifests that list them) to {folder}; "
               f"they will be compiled again")
