"""Put on PYTHONPATH by `nnunet-warmer run` and by the static shapes profile; runs in every Python process of
the wrapped command (DDP ranks and `spawn` children too).

- NNUNET_WARMER_RECOMPILE_LIMIT: sets dynamo's recompile limit once torch is imported (it has no variable).
- NNUNET_WARMER_PROBE_DIR: counts symbolic shapes while torch compiles, and at exit writes torch.compile's
  counters to that folder.
- NNUNET_WARMER_QUIET: drops the two messages every nnU-Net job prints that say nothing about the job: the
  `torch.jit.interface` deprecation at import, and "No CUDA runtime is found" each time inductor builds or
  loads C++ kernels on a host without CUDA. `run` sets it; everything else is left as it is.

Imports nothing heavy and never imports torch itself: the settings are applied right after the process
imports torch on its own.
"""

import atexit
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
import warnings
from typing import Any

import nnunet_warmer_hook_variables as variables

_PROBE_DIR = os.environ.get(variables.PROBE_DIR)
_RECOMPILE_LIMIT = os.environ.get(variables.RECOMPILE_LIMIT)
_QUIET = os.environ.get(variables.QUIET) == "1"


class _DropNoCudaRuntime(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def _quiet_known_noise() -> None:
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.interface` is deprecated", category=FutureWarning)
    logging.getLogger("torch.utils.cpp_extension").addFilter(_DropNoCudaRuntime())


def _warmer_counters() -> Any:
    """warmer.values.counters, imported from the package that installed this hook."""
    parent = os.environ.get(variables.PACKAGE_PARENT)
    if parent and parent not in sys.path:
        sys.path.insert(0, parent)
    from warmer.values import counters

    return counters


def _after_torch_import() -> None:
    try:
        if _RECOMPILE_LIMIT:
            import torch._dynamo.config

            torch._dynamo.config.recompile_limit = int(_RECOMPILE_LIMIT)
        if _PROBE_DIR:
            _warmer_counters().count_symbolic_shapes()
    except Exception as e:  # never break the user's job over a setting or a statistic
        print(f"nnunet-warmer hook: could not configure torch: {e}", file=sys.stderr)


class _RunAfterTorchImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `torch` with the other finders, then runs `_after_torch_import` once its import has finished."""

    def __init__(self) -> None:
        self._loader: Any = None

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        self._loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        _after_torch_import()


def _write_counters() -> None:
    if "torch._dynamo" not in sys.modules:
        return
    try:
        record = _warmer_counters().snapshot().to_dict()
        record["pid"] = os.getpid()
        record["argv"] = sys.argv[:3]
        cuda = getattr(sys.modules.get("torch"), "cuda", None)
        if cuda is not None and cuda.is_initialized():
            record["gpu_name"] = cuda.get_device_name()
        path = os.path.join(_PROBE_DIR, f"{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)
    except Exception as e:  # never break the user's job over a statistic
        print(f"nnunet-warmer probe: could not record counters: {e}", file=sys.stderr)


def _chain_next_sitecustomize() -> None:
    """Run the sitecustomize this one shadows, if the environment had one."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == here:
            continue
        candidate = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_nnunet_warmer_chained_sitecustomize", candidate)
            if spec and spec.loader:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


if _RECOMPILE_LIMIT or _PROBE_DIR:
    if "torch" in sys.modules:
        _after_torch_import()
    else:
        sys.meta_path.insert(0, _RunAfterTorchImport())
if _PROBE_DIR:
    atexit.register(_write_counters)
if _QUIET:
    _quiet_known_noise()
_chain_next_sitecustomize()
