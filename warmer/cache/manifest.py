"""Stage 4: manifests, one per verified target and environment fingerprint, written atomically.

A manifest exists only after a fresh process replayed the target with zero misses, so its presence is
what `status` (and a scheduler) trusts. Path: `CacheDir.manifest_path(key, fingerprint_id)`, where the id
hashes the fingerprint; several GPU models or torch builds can share one cache side by side.
On disk a manifest is JSON; read back it is a `Manifest`, which knows its own path.
Its entries are the target's closure (format 2): the files a fresh process replaying it read, loaded or checked,
with size and SHA-256, and nothing else. Format 1 manifests listed the whole cache as it was when they were
published; they stay valid, and the next `warm` (a re-verify) rewrites them with a closure.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmer.cache.checksums import closure_checksums
from warmer.cache.files import FileIdentity, atomic_write_json, file_identity
from warmer.cache.layout import CacheDir
from warmer.values.results import ReplayResult
from warmer.values.targets import Target, TargetKey

MANIFEST_VERSION = 2
CLOSURE_SINCE_VERSION = 2


class UnreadableManifestError(ValueError):
    """A file under manifests/ that is not a manifest (garbled, truncated, or not this format)."""


@dataclass(frozen=True)
class Manifest:
    """A verified target: the fingerprint it was verified under, its cold and verify replays, and the checksum
    ("size:sha256") of every cache entry, keyed by its path relative to the cache dir."""

    path: Path
    target: Target
    fingerprint: dict[str, str]
    fingerprint_id: str
    cold: ReplayResult | None
    verify: ReplayResult
    warmed_at: str
    verified_at: str
    host: str
    entries: dict[str, str]
    manifest_version: int = MANIFEST_VERSION

    @property
    def lists_closure(self) -> bool:
        """Its entries are its target's closure (format 2), not a snapshot of the whole cache (format 1)."""
        return self.manifest_version >= CLOSURE_SINCE_VERSION

    def matches(self, fingerprint: Mapping[str, str], fingerprint_id: str) -> bool:
        """Verified under exactly this fingerprint."""
        return self.fingerprint_id == fingerprint_id and self.fingerprint == fingerprint

    def to_dict(self) -> dict[str, Any]:
        return {"manifest_version": self.manifest_version, "target": self.target.to_dict(),
                "fingerprint": self.fingerprint, "fingerprint_id": self.fingerprint_id,
                "cold": self.cold.to_dict(with_closure=False) if self.cold is not None else None,
                "verify": self.verify.to_dict(with_closure=False),
                "warmed_at": self.warmed_at, "verified_at": self.verified_at, "host": self.host,
                "entries": self.entries}

    def write(self) -> Manifest:
        """Publish it: an atomic write to its path."""
        atomic_write_json(self.path, self.to_dict())
        return self

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """The manifest at `path`; UnreadableManifestError when it cannot be read or is not a manifest."""
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise UnreadableManifestError(f"{path}: {e}") from None
        return cls.from_json(path, raw)

    @classmethod
    def from_json(cls, path: Path, raw: bytes) -> Manifest:
        """The manifest whose JSON is `raw`, as if read at `path` (a bundle's member); UnreadableManifestError when
        it is not a manifest."""
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or not isinstance(data.get("fingerprint"), dict):
                raise UnreadableManifestError(f"{path} is not a manifest")
            return cls(path=path, target=Target.from_dict(data["target"]), fingerprint=data["fingerprint"],
                       fingerprint_id=str(data["fingerprint_id"]),
                       cold=ReplayResult.from_dict(data["cold"]) if data.get("cold") else None,
                       verify=ReplayResult.from_dict(data.get("verify") or {}),
                       warmed_at=str(data.get("warmed_at", "")), verified_at=str(data.get("verified_at", "")),
                       host=str(data.get("host", "")), entries=dict(data.get("entries") or {}),
                       manifest_version=int(data.get("manifest_version", 1)))
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise UnreadableManifestError(f"{path}: {e}") from None


def new_manifest(cache: CacheDir, target: Target, fingerprint: dict[str, str], fingerprint_id: str,
                 cold: ReplayResult | None, verify: ReplayResult, previous: Manifest | None = None) -> Manifest:
    """The manifest of a verified target, with the checksums of the closure its verify replay recorded (written by
    `Manifest.write`). A re-verify (`cold` None) keeps the previous manifest's cold replay and warm time, and
    rewrites a format-1 manifest as a closure. A closure file that is gone raises FileNotFoundError."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return Manifest(
        path=cache.manifest_path(target.key, fingerprint_id), target=target, fingerprint=fingerprint,
        fingerprint_id=fingerprint_id, cold=cold if cold is not None else (previous.cold if previous else None),
        verify=verify, warmed_at=(previous.warmed_at or now) if cold is None and previous else now, verified_at=now,
        host=socket.gethostname(), entries=closure_checksums(cache, verify.closure))


def read_manifests(cache: CacheDir, key: TargetKey) -> list[Manifest]:
    """All readable manifests of a target, newest verification first; unreadable ones are skipped."""
    return read_manifest_folder(cache.manifest_folder(key))


def read_manifest_folder(folder: Path) -> list[Manifest]:
    manifests = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            manifests.append(Manifest.read(path))
        except UnreadableManifestError:
            continue
    manifests.sort(key=lambda m: m.verified_at, reverse=True)
    return manifests


class ManifestMemo:
    """Manifests already parsed, each with the identity its file had then: a folder is listed and each file
    stat'ed, and only a file whose identity changed is read again (what `watch` keeps between passes)."""

    def __init__(self) -> None:
        self._known: dict[Path, tuple[FileIdentity, Manifest]] = {}

    def read_folder(self, folder: Path) -> list[Manifest]:
        """`read_manifest_folder`, reading only what changed since this memo last read it."""
        manifests = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                identity = file_identity(os.stat(path))
                known = self._known.get(path)
                if known is None or known[0] != identity:
                    known = (identity, Manifest.read(path))
                    if file_identity(os.stat(path)) == identity:  # not replaced while it was read
                        self._known[path] = known
                manifests.append(known[1])
            except (OSError, UnreadableManifestError):
                continue
        manifests.sort(key=lambda m: m.verified_at, reverse=True)
        return manifests


def read_manifest_files(paths: list[Path]) -> tuple[list[Manifest], list[Path]]:
    """The manifests at `paths` that parse, and the paths of those that do not, each file read once."""
    manifests, unreadable = [], []
    for path in paths:
        try:
            manifests.append(Manifest.read(path))
        except UnreadableManifestError:
            unreadable.append(path)
    return manifests, unreadable


def matching_manifest(manifests: list[Manifest], fingerprint: dict[str, str], fingerprint_id: str) -> Manifest | None:
    """The manifest verified under exactly this fingerprint, if any."""
    return next((m for m in manifests if m.matches(fingerprint, fingerprint_id)), None)
