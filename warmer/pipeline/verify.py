"""Stage 3: decide whether a fresh replay proves the cache warm.

Zero FX-graph misses and zero AOTAutograd misses are required; a bypass (a graph torch refuses to cache)
would recompile in every training job, so it fails verification too. One exception: under DDP torch itself
refuses to put two kinds of graphs in the AOTAutograd cache (the network's graphs, split into buckets by
dynamo's DDPOptimizer with `fakify_first_call`, and the dice loss, whose all-gather is an autograd.Function).
Every DDP job re-traces those at the AOT level whatever the cache holds, while their inductor compile
still hits the FX cache; so a DDP rank may show AOT bypasses, never FX misses, AOT misses or FX bypasses.
Times are kept beside the counters: on CPU, full hits can still hide kernel rebuilds, and only the time
shows that.
"""

from __future__ import annotations

from warmer.values.counters import Counters
from warmer.values.results import ReplayResult

_CHECKED = (("fx_miss", "FX-graph misses"), ("aot_miss", "AOTAutograd misses"), ("fx_bypass", "FX-graph bypasses"),
            ("aot_bypass", "AOTAutograd bypasses"))


def problems(counters: Counters, ddp: bool = False) -> list[str]:
    """What keeps a replay's counters from proving the cache warm; empty when it is warm."""
    found = [f"{getattr(counters, name)} {what}" for name, what in _CHECKED
             if getattr(counters, name) and not (ddp and name == "aot_bypass")]
    if counters.fx_hit == 0:
        found.append("no FX-graph hits (nothing was compiled?)")
    return found


def speedup(cold: ReplayResult | None, verify: ReplayResult) -> float | None:
    """Cold replay time over verify replay time, phase sums measured in this warm."""
    if cold is None or not cold.phases or not verify.phases:
        return None
    return round(cold.seconds / verify.seconds, 1) if verify.seconds > 0 else None
