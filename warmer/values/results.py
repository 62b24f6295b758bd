"""What goes into a replay process and what comes back: `ReplaySpec` and `ReplayResult`.

Both cross a process boundary as JSON (spec.json, result.json), and a manifest keeps the cold and the verify
result of its target, so each has `to_dict` / `from_dict`; everywhere else they are read by attribute.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from warmer.values.counters import Counters
from warmer.values.targets import Target


@dataclass(frozen=True)
class ReplaySpec:
    """One replay: the target, whether a trainer that does not compile may run eager (benchmarks), and how many
    extra train steps to time (benchmarks)."""

    target: Target
    allow_eager: bool = False
    steady_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target.to_dict(), "allow_eager": self.allow_eager, "steady_steps": self.steady_steps}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReplaySpec:
        return cls(Target.from_dict(data["target"]), bool(data.get("allow_eager", False)),
                   int(data.get("steady_steps", 0)))


@dataclass(frozen=True)
class ReplayResult:
    """A replay that ran to the end: the fingerprint its process saw, seconds per phase, torch's counters, and its
    closure: the files under the cache dir (relative to it) that the process read, loaded or checked.

    `compiles` is False when the trainer does not use torch.compile on that device (then nothing else is set)."""

    compiles: bool
    fingerprint: dict[str, str]
    phases: dict[str, float] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    wall_seconds: float = 0.0
    steady_train_step: float | None = None
    closure: tuple[str, ...] = ()

    @property
    def seconds(self) -> float:
        """The replayed phases' time: what a training job's first steps would spend."""
        return sum(self.phases.values())

    def to_dict(self, with_closure: bool = True) -> dict[str, Any]:
        """JSON; a manifest keeps its closure once, as its checksummed entries (`with_closure=False` here)."""
        data = {"steady_train_step": self.steady_train_step, "compiles": self.compiles,
                "fingerprint": self.fingerprint, "phases": self.phases, "counters": self.counters.to_dict(),
                "wall_seconds": self.wall_seconds}
        return {**data, "closure": list(self.closure)} if with_closure else data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReplayResult:
        return cls(compiles=bool(data.get("compiles", True)), fingerprint=dict(data.get("fingerprint") or {}),
                   phases={str(k): float(v) for k, v in (data.get("phases") or {}).items()},
                   counters=Counters.from_dict(data.get("counters") or {}),
                   wall_seconds=float(data.get("wall_seconds", 0.0)),
                   steady_train_step=data.get("steady_train_step"),
                   closure=tuple(str(p) for p in data.get("closure") or ()))

