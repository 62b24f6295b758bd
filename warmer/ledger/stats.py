"""`nnunet-warmer stats`: what the cache saved, summed from the ledger, like `sccache --show-stats`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from warmer.cache.layout import CacheDir
from warmer.errors import UserError
from warmer.ledger import records

COUNTERS = ("fx_hit", "fx_miss", "aot_hit", "aot_miss")


def parse_since(value: str) -> float:
    """`--since`: an ISO date or seconds since the epoch."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise UserError(f"--since '{value}' is neither a date (2026-11-29T08:00) nor seconds since the epoch: "
                        f"fix --since") from None


def summarize(cache: CacheDir, since: float) -> dict[str, Any]:
    totals: dict[str, Any] = {k: 0 for k in COUNTERS}
    totals.update(runs=0, warms=0, cannot_compile=0, compile_seconds=0.0, warm_compile_seconds=0.0,
                  estimated_seconds_saved=0.0)
    groups: dict[str, dict[str, Any]] = {}
    for record in records.records(cache, since):
        labels = {"dataset": str(record.get("dataset", "?")), "configuration": str(record.get("configuration", "?")),
                  "gpu": str(record.get("gpu_name") or "cpu")}
        key = "/".join(labels.values())
        group = groups.setdefault(key, {**labels, **{k: 0 for k in (*COUNTERS, "runs", "warms", "cannot_compile")},
                                        "compile_seconds": 0.0, "estimated_seconds_saved": 0.0})
        if record.get("kind") == "warm":
            totals["warms"] += 1
            group["warms"] += 1
            if record.get("state") == "cannot-compile":
                totals["cannot_compile"] += 1
                group["cannot_compile"] += 1
            totals["warm_compile_seconds"] += float(record.get("compile_seconds", 0.0))
            continue
        totals["runs"] += 1
        group["runs"] += 1
        for name in (*COUNTERS, "compile_seconds", "estimated_seconds_saved"):
            value = record.get(name, 0)
            totals[name] += value
            group[name] += value
    hits_and_misses = totals["fx_hit"] + totals["fx_miss"]
    totals["fx_hit_rate"] = round(totals["fx_hit"] / hits_and_misses, 4) if hits_and_misses else None
    for name in ("compile_seconds", "warm_compile_seconds", "estimated_seconds_saved"):
        totals[name] = round(totals[name], 3)
    return {"cache_dir": str(cache.root), "since": since, "totals": totals,
            "groups": {k: {n: round(v, 3) if isinstance(v, float) else v for n, v in g.items()}
                       for k, g in sorted(groups.items())}}


def describe(summary: dict[str, Any]) -> str:
    t = summary["totals"]
    rate = f"{100 * t['fx_hit_rate']:.1f} %" if t["fx_hit_rate"] is not None else "-"
    lines = [
        f"{'Cache directory':34} {summary['cache_dir']}",
        f"{'Runs / warms recorded':34} {t['runs']} / {t['warms']}",
        f"{'Warms that found no compiler etc.':34} {t['cannot_compile']}",
        f"{'FX-graph hits / misses':34} {t['fx_hit']} / {t['fx_miss']}",
        f"{'FX-graph hit rate':34} {rate}",
        f"{'AOTAutograd hits / misses':34} {t['aot_hit']} / {t['aot_miss']}",
        f"{'Compile seconds in runs':34} {t['compile_seconds']:.1f}",
        f"{'Compile seconds in warms':34} {t['warm_compile_seconds']:.1f}",
        f"{'Estimated seconds saved':34} {t['estimated_seconds_saved']:.1f}",
    ]
    if summary["groups"]:
        lines.append("")
        lines.append(f"{'dataset/configuration/GPU':50} {'runs':>5} {'warms':>5} {'FX hit':>7} {'miss':>5} "
                     f"{'compile s':>10} {'saved s':>8}")
        for key, g in summary["groups"].items():
            lines.append(f"{key:50} {g['runs']:>5} {g['warms']:>5} {g['fx_hit']:>7} {g['fx_miss']:>5} "
                         f"{g['compile_seconds']:>10.1f} {g['estimated_seconds_saved']:>8.1f}")
    return "\n".join(lines)
