"""Stage 4: manifests, one per verified target and environment fingerprint, written atomically.

A manifest exists only after a fresh process replayed the target with zero misses, so its presence is
what `status` (and a scheduler) trusts. Path: manifests/<dataset>/<plans>/<configuration>/<trainer>/<id>.json
where <id> hashes the fingerprint; several GPU models or torch builds can share one cache side by side.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from warmer.cache.integrity import entry_checksums
from warmer.cache.layout import CacheDir
from warmer.pipeline.targets import Target

MANIFEST_VERSION = 1
TEMP_SUFFIX = ".tmp"
ABANDONED_AFTER_SECONDS = 86400  # a temp file of another host this old belongs to a writer that died


def target_folder(cache: CacheDir, target: Target, base: Path | None = None) -> Path:
    return ((base or cache.manifests) / target.dataset_name / target.plans_identifier / target.configuration
            / target.trainer)


def manifest_path(cache: CacheDir, target: Target, fingerprint_id: str) -> Path:
    return target_folder(cache, target) / f"{fingerprint_id}.json"


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}{TEMP_SUFFIX}")


def atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    """Write to a temp file unique to this host and process, fsync it, rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def remove_abandoned_temps(folder: Path) -> int:
    """Delete the temp files of writers that died mid-write (SIGKILL, node lost), so a crash leaves no litter.

    A temp file names its writer's host and pid: on this host it is abandoned once that process is gone; a
    file of another host is abandoned once it is a day old (no write takes that long). Returns how many went."""
    removed, host = 0, socket.gethostname()
    for tmp in folder.glob(f".*{TEMP_SUFFIX}") if folder.is_dir() else []:
        writer_host, _, pid = tmp.name[: -len(TEMP_SUFFIX)].partition(".json.")[2].rpartition(".")
        try:
            if writer_host == host and pid.isdigit():
                abandoned = not _process_exists(int(pid))
            else:
                abandoned = time.time() - tmp.stat().st_mtime > ABANDONED_AFTER_SECONDS
            if abandoned:
                tmp.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process
    return True


def write_manifest(cache: CacheDir, target: Target, fingerprint: dict[str, str], fingerprint_id: str,
                   cold: dict[str, Any] | None, verify: dict[str, Any],
                   previous: dict[str, Any] | None = None, entries: dict[str, str] | None = None) -> Path:
    """Publish a verified target; `entries` are the cache's checksums when the caller already has them (one
    pass over the tree serves every rank of a DDP group)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    cold_record = cold if cold is not None else (previous or {}).get("cold")
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "target": target.to_dict(),
        "fingerprint": fingerprint,
        "fingerprint_id": fingerprint_id,
        "cold": cold_record,
        "verify": verify,
        "warmed_at": (previous or {}).get("warmed_at", now) if cold is None else now,
        "verified_at": now,
        "host": socket.gethostname(),
        "entries": entry_checksums(cache) if entries is None else entries,
    }
    path = manifest_path(cache, target, fingerprint_id)
    atomic_write_json(path, manifest)
    return path


def read_manifests(cache: CacheDir, target: Target) -> list[dict[str, Any]]:
    """All readable manifests of a target, newest verification first; unreadable ones are skipped."""
    return read_manifest_folder(target_folder(cache, target))


def read_manifest_folder(folder: Path) -> list[dict[str, Any]]:
    manifests = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("fingerprint"), dict):
            data["_path"] = str(path)
            manifests.append(data)
    manifests.sort(key=lambda m: str(m.get("verified_at", "")), reverse=True)
    return manifests


def matching_manifest(manifests: list[dict[str, Any]], fingerprint: dict[str, str],
                      fingerprint_id: str) -> dict[str, Any] | None:
    """The manifest verified under exactly this fingerprint, if any."""
    return next((m for m in manifests if m.get("fingerprint_id") == fingerprint_id
                 and m.get("fingerprint") == fingerprint), None)
