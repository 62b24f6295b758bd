"""Read torch.compile's own counters (cache hits and misses, compile seconds) in a process.

Used by the replay subprocesses and by the probe that `nnunet-warmer run` installs in every Python
process of a wrapped command, so both report the same numbers the same way. Imports nothing heavy: the probe
loads it into every process of a user's job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

SYMBOLIC_SHAPES_LOGGER = "torch.fx.experimental.symbolic_shapes"
_symbols_created = 0


@dataclass(frozen=True)
class Counters:
    """torch.compile's counters of one process, or their sum over several."""

    fx_hit: int = 0
    fx_miss: int = 0
    fx_bypass: int = 0
    aot_hit: int = 0
    aot_miss: int = 0
    aot_bypass: int = 0
    frames: int = 0
    symbols: int = 0
    compile_seconds: float = 0.0

    @property
    def misses(self) -> int:
        return self.fx_miss + self.aot_miss

    def __add__(self, other: Counters) -> Counters:
        return Counters(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Counters:
        """The counters in a JSON record; other keys (pid, argv, ...) are ignored, missing ones are zero."""
        return cls(**{f.name: (float if f.name == "compile_seconds" else int)(data[f.name])
                      for f in fields(cls) if f.name in data})

    def rounded(self) -> Counters:
        return Counters(**{**asdict(self), "compile_seconds": round(self.compile_seconds, 3)})

    def describe(self) -> str:
        return (f"FX graphs {self.fx_hit} hit / {self.fx_miss} miss / {self.fx_bypass} bypass, "
                f"AOT {self.aot_hit} hit / {self.aot_miss} miss / {self.aot_bypass} bypass, "
                f"{self.symbols} symbolic shapes, compile {self.compile_seconds:.1f} s")


def total(records: Iterable[Counters]) -> Counters:
    """The sum of several processes' counters."""
    summed = Counters()
    for record in records:
        summed = summed + record
    return summed.rounded()


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


def snapshot() -> Counters:
    """Counters of this process so far; all zero if torch.compile never ran."""
    from torch._dynamo.utils import calculate_time_spent, counters

    inductor, aot = counters["inductor"], counters["aot_autograd"]
    return Counters(
        fx_hit=int(inductor["fxgraph_cache_hit"]),
        fx_miss=int(inductor["fxgraph_cache_miss"]),
        fx_bypass=int(inductor["fxgraph_cache_bypass"]),
        aot_hit=int(aot["autograd_cache_hit"]),
        aot_miss=int(aot["autograd_cache_miss"]),
        aot_bypass=int(aot["autograd_cache_bypass"]),
        frames=int(counters["frames"]["total"]),
        symbols=_symbols_created,
        compile_seconds=round(float(calculate_time_spent().get("total_wall_time", 0.0)), 3),
    )
