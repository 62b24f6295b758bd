"""Stage 4's reader: is each target warm for a job environment? What a scheduler asks before training.

warm    - a manifest verified under exactly this fingerprint exists, and its entries match their checksums
damaged - that manifest exists, but entries it lists are missing or altered (`warm` repairs them)
stale   - manifests exist, but for another fingerprint: the differing parts are named
cannot-compile - a warm under this fingerprint found that this node type cannot compile (no C compiler, a GPU
          too old for Triton, Triton missing): the reason and nnU-Net's workaround are named
cold    - no manifest for this target
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from warmer.cache.digests import DigestIndex
from warmer.cache.findings import finding_for
from warmer.cache.integrity import manifest_damage
from warmer.cache.layout import CacheDir
from warmer.cache.manifest import ManifestMemo, matching_manifest
from warmer.values.fingerprint import (
    device_description,
    differences,
    fingerprint_id,
    fingerprint_on,
    software_fingerprint,
)
from warmer.values.plans import DatasetPlans, find_trainer_class, trainer_source_hash
from warmer.values.profiles import JobEnvironment
from warmer.values.targets import Target

State = Literal["warm", "damaged", "stale", "cannot-compile", "cold"]
CANNOT_COMPILE_EXIT = 3  # `status`'s exit code when a target is cannot-compile: what a job script tests


@dataclass(frozen=True)
class TargetStatus:
    """One target's state for one environment, the manifest it was judged by, and what differs."""

    target: Target
    fingerprint_id: str
    state: State
    manifest: Path | None = None
    differences: tuple[str, ...] = ()
    verified_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"target": self.target.to_dict(), "label": self.target.label,
                                  "fingerprint_id": self.fingerprint_id, "state": self.state,
                                  "manifest": str(self.manifest) if self.manifest is not None else None,
                                  "differences": list(self.differences)}
        if self.state == "warm":
            record["verified_at"] = self.verified_at
        return record

    def describe(self) -> str:
        line = f"{self.state:7}  {self.target.label}  batch {self.target.batch_per_rank} on {self.target.device}"
        if self.state in ("stale", "damaged", "cannot-compile"):
            line += "  (" + "; ".join(self.differences) + ")"
            if any(d.startswith("automatic_dynamic_shapes:") for d in self.differences):
                line += "  [warmed under the other --shapes profile: warm and train with the same one]"
        return line


def target_status(dp: DatasetPlans, target: Target, cache: CacheDir, environment: JobEnvironment) -> TargetStatus:
    """The target's state, from everything read again (every file of its closure hashed)."""
    return StatusReader(cache, environment).status(dp, target)


class StatusReader:
    """Reads targets' states, each thing at most once: the host's fingerprint once per device and each trainer's
    source once per reader; with `index`, a closure file only when its identity changed (or a day passed); with
    `manifests`, a manifest only when its identity changed. `watch` makes one reader per pass and keeps the index
    and the manifests between passes."""

    def __init__(self, cache: CacheDir, environment: JobEnvironment, index: DigestIndex | None = None,
                 manifests: ManifestMemo | None = None) -> None:
        self.cache, self.environment, self.index = cache, environment, index
        self.manifests = manifests if manifests is not None else ManifestMemo()
        self._hosts: dict[str, dict[str, str]] = {}
        self._trainer_sources: dict[str, str] = {}

    def fingerprint(self, dp: DatasetPlans, target: Target) -> dict[str, str]:
        if target.device not in self._hosts:
            self._hosts[target.device] = {**software_fingerprint(self.environment),
                                          **device_description(target.device)}
        if target.trainer not in self._trainer_sources:
            self._trainer_sources[target.trainer] = trainer_source_hash(find_trainer_class(target.trainer))
        return fingerprint_on(self._hosts[target.device], self._trainer_sources[target.trainer], dp, target)

    def status(self, dp: DatasetPlans, target: Target) -> TargetStatus:
        fingerprint = self.fingerprint(dp, target)
        fp_id = fingerprint_id(fingerprint)
        manifests = self.manifests.read_folder(self.cache.manifest_folder(target.key))
        match = matching_manifest(manifests, fingerprint, fp_id)
        if match is not None:
            broken = manifest_damage(self.cache, match, self.index)
            if broken:
                return TargetStatus(target, fp_id, "damaged", match.path,
                                    (f"{len(broken)} cache entries missing or altered since the verify, e.g. "
                                     f"{broken[0]}: warm again to repair",))
            return TargetStatus(target, fp_id, "warm", match.path, verified_at=match.verified_at)
        finding = finding_for(self.cache, target.key, fp_id)
        if finding is not None:
            return TargetStatus(target, fp_id, "cannot-compile", finding.path, (finding.cannot_compile.line(),))
        if manifests:
            closest = min(manifests, key=lambda m: len(differences(m.fingerprint, fingerprint)))
            return TargetStatus(target, fp_id, "stale", closest.path,
                                tuple(differences(closest.fingerprint, fingerprint)))
        return TargetStatus(target, fp_id, "cold")


def targets_status(dp: DatasetPlans, targets: list[Target], cache: CacheDir, environment: JobEnvironment,
                   scratch: Path) -> list[TargetStatus]:
    """`target_status` of each target, with this user's index of hashes on this host (in `scratch`), which keeps
    what this call hashed for the next."""
    index = DigestIndex.open(cache, scratch)
    reader = StatusReader(cache, environment, index)
    statuses = [reader.status(dp, t) for t in targets]
    index.save()
    return statuses
