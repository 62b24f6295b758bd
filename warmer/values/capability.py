"""Can this node compile at all? The failures after which no warm can succeed here, and nnU-Net's answer to each.

nnU-Net users meet the same few walls when `torch.compile` is on: no C compiler on the node, a GPU below what
Triton supports, Triton missing or broken, the C++ compiler failing on inductor's code. The answer is the same
each time: install what is missing, or train that GPU type eager (`nnUNet_compile=f`). The warm job meets them
first, once per GPU type; `diagnose` recognises them in the exception a replay died of, and `gpu_too_old` asks
torch's own rule (the one dynamo applies before it starts Triton) about a device's properties.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from warmer.errors import WarmError

EAGER_VARIABLE, EAGER_VALUE = "nnUNet_compile", "f"
EAGER = f"{EAGER_VARIABLE}={EAGER_VALUE}"
EAGER_ADVICE = f"or train this GPU type eager ({EAGER}; `nnunet-warmer run --eager-if-cannot-compile`)"


@dataclass(frozen=True)
class CannotCompile:
    """Why this node cannot compile, the error that showed it, and what to do."""

    cause: str
    detail: str
    advice: str

    def line(self) -> str:
        return f"this node cannot compile: {self.cause} ({self.detail}): {self.advice}"

    def to_dict(self) -> dict[str, str]:
        return {"cause": self.cause, "detail": self.detail, "advice": self.advice}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CannotCompile:
        return cls(str(data["cause"]), str(data["detail"]), str(data["advice"]))


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and everything it wraps: causes, contexts, and inductor's `inner_exception`."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, getattr(e, "inner_exception", None)]


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def diagnose(error: BaseException) -> CannotCompile | None:
    """The node-wide reason `error` (what a replay died of) shows, or None for any other failure."""
    for e in _chain(error):
        names = {cls.__name__ for cls in type(e).__mro__}
        text = str(e)
        if "InvalidCxxCompiler" in names or "Failed to find C compiler" in text:
            return CannotCompile("no working C/C++ compiler", _first_line(e),
                                 f"install gcc and g++ on this GPU type's nodes (or point CC and CXX at them), "
                                 f"{EAGER_ADVICE}")
        if "GPUTooOldForTriton" in names or "too old to be supported by the triton" in text:
            return CannotCompile("GPU too old for Triton", _first_line(e),
                                 f"Triton needs a newer GPU: train this GPU type eager ({EAGER}; `nnunet-warmer run "
                                 f"--eager-if-cannot-compile`)")
        if "TritonMissing" in names or "TritonUnavailableError" in names or "working triton installation" in text:
            return CannotCompile("Triton missing or broken", _first_line(e),
                                 f"install the triton release your torch names (pip install torch again), "
                                 f"{EAGER_ADVICE}")
        if "CppCompileError" in names:
            return CannotCompile("the C++ compiler fails on inductor's code", _first_line(e),
                                 f"check the compiler and Python headers (gcc, g++, python3-dev), {EAGER_ADVICE}")
    return None


@contextlib.contextmanager
def _properties(props: Any) -> Iterator[None]:
    from torch._dynamo.device_interface import CudaInterface

    original = CudaInterface.Worker.get_device_properties
    CudaInterface.Worker.get_device_properties = staticmethod(lambda device=None: props)  # type: ignore[method-assign]
    try:
        yield
    finally:
        CudaInterface.Worker.get_device_properties = original  # type: ignore[method-assign]


def gpu_too_old(props: Any) -> CannotCompile | None:
    """Whether torch would refuse Triton for a CUDA device with these properties (name, major, minor), by torch's
    own rule (`CudaInterface.is_triton_capable`), not a copy of its threshold."""
    from torch._dynamo.device_interface import CudaInterface

    with _properties(props):
        capable = CudaInterface.is_triton_capable(0)
    if capable:
        return None
    return CannotCompile("GPU too old for Triton", f"{props.name} has CUDA capability {props.major}.{props.minor}",
                         f"Triton needs a newer GPU: train this GPU type eager ({EAGER}; `nnunet-warmer run "
                         f"--eager-if-cannot-compile`)")


class CannotCompileError(WarmError):
    """A warm failed because this node cannot compile at all (`finding`): the command exits 2 with its one line."""

    def __init__(self, finding: CannotCompile, log: str) -> None:
        super().__init__(f"{finding.line()} (full log: {log})")
        self.finding = finding
