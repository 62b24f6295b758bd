"""Stage 4's reader: is each target warm for *this* environment? What a scheduler asks before training.

warm    - a manifest verified under exactly this fingerprint exists, and its entries match their checksums
damaged - that manifest exists, but entries it lists are missing or altered (`warm` repairs them)
stale   - manifests exist, but for another fingerprint: the differing parts are named
cold    - no manifest for this target
"""

from __future__ import annotations

from typing import Any

from warmer.cache import integrity
from warmer.cache import manifest as publish
from warmer.cache.layout import CacheDir
from warmer.pipeline.fingerprint import differences, fingerprint_id, target_fingerprint
from warmer.pipeline.plans import DatasetPlans
from warmer.pipeline.targets import Target


def target_status(dp: DatasetPlans, target: Target, cache: CacheDir) -> dict[str, Any]:
    fingerprint = target_fingerprint(dp, target)
    fp_id = fingerprint_id(fingerprint)
    manifests = publish.read_manifests(cache, target)
    record: dict[str, Any] = {"target": target.to_dict(), "label": target.label, "fingerprint_id": fp_id}
    match = publish.matching_manifest(manifests, fingerprint, fp_id)
    broken = integrity.manifest_damage(cache, match) if match is not None else []
    if match is not None and broken:
        record.update(state="damaged", manifest=match["_path"],
                      differences=[f"{len(broken)} cache entries missing or altered since the verify, e.g. "
                                   f"{broken[0]}: warm again to repair"])
    elif match is not None:
        record.update(state="warm", manifest=match["_path"], verified_at=match.get("verified_at"),
                      differences=[])
    elif manifests:
        closest = min(manifests, key=lambda m: len(differences(m["fingerprint"], fingerprint)))
        record.update(state="stale", manifest=closest["_path"],
                      differences=differences(closest["fingerprint"], fingerprint))
    else:
        record.update(state="cold", manifest=None, differences=[])
    return record


def describe(record: dict[str, Any]) -> str:
    line = f"{record['state']:7}  {record['label']}  batch {record['target']['batch_per_rank']} on " \
           f"{record['target']['device']}"
    if record["state"] in ("stale", "damaged"):
        line += "  (" + "; ".join(record["differences"]) + ")"
        if any(d.startswith("automatic_dynamic_shapes:") for d in record["differences"]):
            line += "  [warmed under the other --shapes profile: warm and train with the same one]"
    return line
