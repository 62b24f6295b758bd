"""The environment fingerprint: everything torch's cache keys depend on that differs between nodes and jobs.

A manifest is valid only for the exact fingerprint it was verified under. `status` recomputes the
fingerprint for the job environment it is given and names the parts that differ when it does not match.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from dataclasses import dataclass
from typing import Any

from warmer.hooks.nnunet_warmer_hook_variables import RECOMPILE_LIMIT
from warmer.values.compat import installed_version
from warmer.values.plans import DatasetPlans, find_trainer_class, plans_hash, trainer_source_hash
from warmer.values.profiles import CACHE_DIR_VARIABLE, CACHE_SWITCHES, JobEnvironment
from warmer.values.targets import Target

COMPILE_ENV_PREFIXES = ("TORCHINDUCTOR_", "TORCHDYNAMO_", "TORCH_DYNAMO_", "TORCH_COMPILE_")


def device_description(device: str) -> dict[str, str]:
    """GPU name and compute capability (both are in torch's FX keys); CPU architecture otherwise."""
    import torch

    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        major, minor = torch.cuda.get_device_capability(index)
        return {"gpu_name": torch.cuda.get_device_name(index), "gpu_capability": f"{major}.{minor}"}
    return {"gpu_name": "none", "gpu_capability": "none", "cpu": f"{platform.machine()} {_cpu_model()}".strip()}


def _cpu_model() -> str:
    """Inductor's C++ kernels are built with -march=native: a CPU cache is only good on the same CPU model."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


def compile_environment(environment: JobEnvironment) -> str:
    """Compiler switches set in the environment (they change inductor's config, hence every key).

    The cache location and the cache switches that `nnunet-warmer env` sets itself are left out.
    """
    ours = {CACHE_DIR_VARIABLE, *CACHE_SWITCHES, "TORCH_COMPILE_CACHE_KEY_TAG"}
    relevant = {k: v for k, v in environment.variables.items()
                if k.startswith(COMPILE_ENV_PREFIXES) and k not in ours}
    return json.dumps(relevant, sort_keys=True) if relevant else ""


def software_fingerprint(environment: JobEnvironment) -> dict[str, str]:
    """The parts every target of a job environment shares: software versions and compiler settings."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_git": getattr(torch.version, "git_version", "unknown"),
        "cuda": str(torch.version.cuda),
        "triton": installed_version("triton"),
        "nnunetv2": installed_version("nnunetv2"),
        "dynamic_network_architectures": installed_version("dynamic_network_architectures"),
        "automatic_dynamic_shapes": str(environment.automatic_dynamic_shapes),
        "recompile_limit": environment.get(RECOMPILE_LIMIT, "default"),
        "cache_key_tag": environment.get("TORCH_COMPILE_CACHE_KEY_TAG", ""),
        "compile_env": compile_environment(environment),
        "platform": sys.platform,
    }


def target_fingerprint(dp: DatasetPlans, target: Target, environment: JobEnvironment) -> dict[str, str]:
    """The full fingerprint of one target in a job environment (flat, string-valued)."""
    host = {**software_fingerprint(environment), **device_description(target.device)}
    return fingerprint_on(host, trainer_source_hash(find_trainer_class(target.trainer)), dp, target)


def fingerprint_on(host: dict[str, str], trainer_source: str, dp: DatasetPlans, target: Target) -> dict[str, str]:
    """`target_fingerprint` from parts already computed: the host's (`software_fingerprint` and
    `device_description` of the target's device) and `trainer_source_hash` of its trainer."""
    fingerprint = dict(host)
    fingerprint.update({
        "trainer": target.trainer,
        "trainer_source": trainer_source,
        "plans_hash": plans_hash(dp, target.configuration),
        "configuration": target.configuration,
        "batch_per_rank": str(target.batch_per_rank),
        "device": target.device,
        "ddp_rank": f"{target.rank} of {target.world_size}",
    })
    return fingerprint


def same_releases_here(fingerprint: dict[str, str]) -> bool:
    """Whether a fingerprint names this host's Python, torch and nnU-Net releases, read without importing torch (a
    job's wrapper must not pay that): a cheap first cut that keeps every manifest a job on this host can use."""
    def release(version: str) -> str:
        return version.split("+", 1)[0]

    return (fingerprint.get("python") == platform.python_version()
            and release(fingerprint.get("torch", "")) == release(installed_version("torch"))
            and fingerprint.get("nnunetv2") == installed_version("nnunetv2"))


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:20]


def differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Human-readable parts that differ, e.g. "torch: 2.13.0 (cache) != 2.14.1 (here)"."""
    def show(value: Any) -> str:
        return "unset" if value in (None, "") else str(value)

    keys = sorted(set(expected) | set(actual))
    return [f"{k}: {show(expected.get(k))} (cache) != {show(actual.get(k))} (here)"
            for k in keys if expected.get(k) != actual.get(k)]


@dataclass(frozen=True)
class HostEnvironment:
    """This host as fingerprints see it: the software parts, and each kind of device it has (cpu; cuda when present)."""

    software: dict[str, str]
    devices: dict[str, dict[str, str]]

    @classmethod
    def here(cls, environment: JobEnvironment) -> HostEnvironment:
        import torch

        devices = {"cpu": device_description("cpu")}
        if torch.cuda.is_available():
            devices["cuda"] = device_description("cuda:0")
        return cls(software_fingerprint(environment), devices)

    def differences(self, fingerprint: dict[str, str], device: str) -> list[str] | None:
        """The parts of a manifest's fingerprint (verified on `device`) that differ from this host: its software,
        and its device of that kind. None when this host has no device of that kind to compare with."""
        described = self.devices.get(device.split(":")[0])
        if described is None:
            return None
        here = {**self.software, **described}
        return differences({k: fingerprint.get(k) for k in here}, here)

    def software_differences(self, fingerprint: dict[str, str]) -> list[str]:
        """The software parts of a fingerprint that differ from this host, whatever device it was verified on."""
        return differences({k: fingerprint.get(k) for k in self.software}, self.software)
