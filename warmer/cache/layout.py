"""Every path of a shared cache directory, and the environment that points torch at it. Nothing else spells one.

Layout under the directory a user passes as `--cache-dir`:
  inductor/          torch's own cache (TORCHINDUCTOR_CACHE_DIR): FX graphs, AOTAutograd entries, kernels, Triton
  inductor/locks/    torch's own lock files (not cache entries)
  manifests/<key>/   one JSON per verified target and environment fingerprint (written by the publish stage)
  locks/<key>/       one lock per target and fingerprint, so only one warmer compiles it at a time
  locks/publish.lock publishes hold it shared, `gc` exclusive while it deletes
  ledger/            one JSON-lines file per host, one record per run and per warmed target
  quarantine/<time>/ damaged entries and the manifests that listed them, moved aside
  findings/<key>/    why a node type cannot compile a target (a warm that failed for want of a compiler, Triton...)
where <key> is a `TargetKey`: dataset/plans/configuration/trainer.
The warmer and every training job must see the same environment, so both take it from `torch_environment`.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from warmer.errors import UserError
from warmer.values.profiles import CACHE_DIR_VARIABLE, CACHE_SWITCHES
from warmer.values.targets import TargetKey

CACHE_DIR_ENV = "NNUNET_WARMER_CACHE_DIR"
LEDGER_PERIOD_MARKER = "period-start.json"


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nnunet-warmer"


def nearest_existing(path: Path) -> Path:
    """`path`, or the nearest of its parents that exists (what decides whether it can be made)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


@dataclass(frozen=True)
class CacheDir:
    root: Path

    @property
    def inductor(self) -> Path:
        return self.root / "inductor"

    @property
    def torch_locks(self) -> Path:
        """torch's own lock files: not cache entries, never checksummed."""
        return self.inductor / "locks"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger"

    @property
    def ledger_period_marker(self) -> Path:
        return self.ledger / LEDGER_PERIOD_MARKER

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    def new_quarantine_folder(self) -> Path:
        return self.quarantine / time.strftime("%Y%m%dT%H%M%S")

    def manifest_folder(self, key: TargetKey) -> Path:
        return self.manifests / key.relative

    def manifest_path(self, key: TargetKey, fingerprint_id: str) -> Path:
        return self.manifest_folder(key) / f"{fingerprint_id}.json"

    def lock_path(self, key: TargetKey, fingerprint_id: str) -> Path:
        return self.locks / key.relative / f"{fingerprint_id}.lock"

    @property
    def publish_lock(self) -> Path:
        return self.locks / "publish.lock"

    @property
    def findings(self) -> Path:
        return self.root / "findings"

    def finding_path(self, key: TargetKey, fingerprint_id: str) -> Path:
        return self.findings / key.relative / f"{fingerprint_id}.json"

    def ledger_file(self, host: str) -> Path:
        return self.ledger / f"{host}.jsonl"

    def torch_environment(self) -> dict[str, str]:
        """Variables a process needs to read and write this cache exactly as the warmer did."""
        return {CACHE_DIR_VARIABLE: str(self.inductor.absolute()), **CACHE_SWITCHES}

    def remove_if_empty(self) -> None:
        """Undo a new cache dir when nothing was compiled: only empty folders (torch makes them on import)
        and our own lock files are in it."""
        if self.root.is_dir() and not any(p.is_file() and self.locks not in p.parents for p in self.root.rglob("*")):
            shutil.rmtree(self.root)

    def require_writable(self) -> None:
        """Fail before any work if the directory (or the nearest existing parent) cannot be written."""
        probe = nearest_existing(self.root)
        if probe.exists() and not probe.is_dir():
            raise UserError(f"cache dir {self.root}: {probe} is not a directory: pass another --cache-dir")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise UserError(f"cache dir {self.root} is not writable ({probe} denies it): fix its permissions "
                            f"or pass another --cache-dir")
