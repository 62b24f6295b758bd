"""Installed by `nnunet-warmer run` on PYTHONPATH: every Python process of the wrapped command (DDP ranks and
multiprocessing children too) writes torch.compile's counters to NNUNET_WARMER_PROBE_DIR at exit.

Safe to re-import in `spawn` children; imports nothing heavy and never imports torch itself.
"""

import atexit
import importlib.util
import json
import os
import sys

_PROBE_DIR = os.environ.get("NNUNET_WARMER_PROBE_DIR")


def _write_counters() -> None:
    if "torch._dynamo" not in sys.modules:
        return
    try:
        sys.path.insert(0, os.environ["NNUNET_WARMER_PACKAGE_PARENT"])
        from warmer.counters import snapshot

        record = snapshot()
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


if _PROBE_DIR:
    atexit.register(_write_counters)
_chain_next_sitecustomize()
