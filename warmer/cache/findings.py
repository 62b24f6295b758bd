"""What a warm learned about a node that cannot compile, kept beside the manifests so that `status`, `run` and
`submit` can say it before a training job finds it out a minute into its first epoch.

Path: `findings/<key>/<fingerprint-id>.json`, one per target and environment fingerprint, like manifests. A warm
that succeeds for that fingerprint removes it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmer.cache.files import atomic_write_json
from warmer.cache.layout import CacheDir
from warmer.values.capability import CannotCompile
from warmer.values.targets import Target, TargetKey


@dataclass(frozen=True)
class Finding:
    """A target and fingerprint this node type cannot compile, and why."""

    path: Path
    target: Target
    fingerprint: dict[str, str]
    cannot_compile: CannotCompile
    host: str
    found_at: str

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target.to_dict(), "fingerprint": self.fingerprint,
                "cannot_compile": self.cannot_compile.to_dict(), "host": self.host, "found_at": self.found_at}

    @classmethod
    def read(cls, path: Path) -> Finding | None:
        """The finding at `path`; None when there is none or it does not parse."""
        try:
            data = json.loads(path.read_text())
            return cls(path, Target.from_dict(data["target"]), dict(data["fingerprint"]),
                       CannotCompile.from_dict(data["cannot_compile"]), str(data["host"]), str(data["found_at"]))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None


def record_finding(cache: CacheDir, target: Target, fingerprint: dict[str, str], fingerprint_id: str,
                   cannot_compile: CannotCompile) -> Finding:
    finding = Finding(cache.finding_path(target.key, fingerprint_id), target, fingerprint, cannot_compile,
                      socket.gethostname(), time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    atomic_write_json(finding.path, finding.to_dict())
    return finding


def finding_for(cache: CacheDir, key: TargetKey, fingerprint_id: str) -> Finding | None:
    return Finding.read(cache.finding_path(key, fingerprint_id))


def findings_of(cache: CacheDir, key: TargetKey) -> list[Finding]:
    """Every finding of a target, whatever its fingerprint."""
    folder = cache.findings / key.relative
    found = [Finding.read(path) for path in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return [f for f in found if f is not None]


def clear_finding(cache: CacheDir, key: TargetKey, fingerprint_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        cache.finding_path(key, fingerprint_id).unlink()
