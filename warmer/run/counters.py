"""Read torch.compile's own counters (cache hits and misses, compile seconds) in a process.

Used by the replay subprocesses and by the probe that `nnunet-warmer run` installs in every Python
process of a wrapped command, so both report the same numbers the same way.
"""

from __future__ import annotations

import logging
from typing import Any

FIELDS = ("fx_hit", "fx_miss", "fx_bypass", "aot_hit", "aot_miss", "aot_bypass", "frames", "symbols")
SYMBOLIC_SHAPES_LOGGER = "torch.fx.experimental.symbolic_shapes"
_symbols_created = 0


class _SymbolCounter(logging.Filter):
    """Counts `create_symbol` records (one per symbolic size dynamo allocates) and lets through only what the
    logger's own level would have shown, so counting stays silent."""

    def __init__(self, shown_from: int) -> None:
        super().__init__()
        self.shown_from = shown_from

    def filter(self, record: logging.LogRecord) -> bool:
        global _symbols_created
        if isinstance(record.msg, str) and record.msg.startswith("create_symbol %s = "):
            _symbols_created += 1
        return record.levelno >= self.shown_from


def count_symbolic_shapes() -> None:
    """Count symbolic shapes from now on in this process (torch has no counter for them); call after torch's
    logging is set up, i.e. after `import torch`."""
    logger = logging.getLogger(SYMBOLIC_SHAPES_LOGGER)
    if any(isinstance(f, _SymbolCounter) for f in logger.filters):
        return
    shown_from = logger.getEffectiveLevel()
    logger.addFilter(_SymbolCounter(shown_from))
    if shown_from > logging.INFO:
        logger.setLevel(logging.INFO)


def snapshot() -> dict[str, Any]:
    """Counters of this process so far; all zero if torch.compile never ran."""
    from torch._dynamo.utils import calculate_time_spent, counters

    inductor, aot = counters["inductor"], counters["aot_autograd"]
    return {
        "fx_hit": int(inductor["fxgraph_cache_hit"]),
        "fx_miss": int(inductor["fxgraph_cache_miss"]),
        "fx_bypass": int(inductor["fxgraph_cache_bypass"]),
        "aot_hit": int(aot["autograd_cache_hit"]),
        "aot_miss": int(aot["autograd_cache_miss"]),
        "aot_bypass": int(aot["autograd_cache_bypass"]),
        "frames": int(counters["frames"]["total"]),
        "symbols": _symbols_created,
        "compile_seconds": round(float(calculate_time_spent().get("total_wall_time", 0.0)), 3),
    }


def merge(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum per-process records into one summary."""
    total: dict[str, Any] = {name: 0 for name in FIELDS}
    total["compile_seconds"] = 0.0
    for record in records:
        for name in FIELDS:
            total[name] += int(record.get(name, 0))
        total["compile_seconds"] += float(record.get("compile_seconds", 0.0))
    total["compile_seconds"] = round(total["compile_seconds"], 3)
    total["processes"] = len(records)
    return total


def describe(summary: dict[str, Any]) -> str:
    return (f"FX graphs {summary['fx_hit']} hit / {summary['fx_miss']} miss / {summary['fx_bypass']} bypass, "
            f"AOT {summary['aot_hit']} hit / {summary['aot_miss']} miss / {summary['aot_bypass']} bypass, "
            f"{summary.get('symbols', 0)} symbolic shapes, compile {summary['compile_seconds']:.1f} s")
