"""What many tests share: how they run the warmer and nnU-Net as a user would, and the arguments they pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from warmer.cache.layout import CacheDir
from warmer.demo import CPU_TRAINERS_DIR
from warmer.demo.synthetic import DEFAULT_DATASET_ID, NnunetPaths
from warmer.values.fingerprint import fingerprint_id, target_fingerprint
from warmer.values.plans import load_plans
from warmer.values.profiles import JobEnvironment
from warmer.values.targets import build_targets

CPU_TRAINER = "nnUNetTrainerCPUCompile_2it"
BIN = Path(sys.executable).parent
TEST_TRAINERS_DIR = Path(__file__).parent / "trainers"
CONCURRENT_WARMERS = 4
CONCURRENT_CONFIGURATION = "2d"
COMPILERS = ("gcc", "g++", "cc", "c++", "clang", "cpp", "x86_64-linux-gnu-", "aarch64-linux-gnu-", "icx", "icpx")


def job_env(paths: NnunetPaths, **extra: str) -> dict[str, str]:
    """What a warmer or training process of the tests needs besides our environment: the datasets, and the CPU
    trainers (the warmer's and the tests' own)."""
    return {**paths.environment(),
            "nnUNet_extTrainer": os.pathsep.join([str(CPU_TRAINERS_DIR), str(TEST_TRAINERS_DIR)]), **extra}


def without_compilers(folder: Path) -> dict[str, str]:
    """The environment of a node where no C or C++ compiler is installed: a PATH with every program of this one
    but those (symlinks in `folder`), and CXX/CC pointing nowhere."""
    folder.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        for program in Path(directory).glob("*") if Path(directory).is_dir() else []:
            name = program.name
            if not (folder / name).exists() and not name.startswith(COMPILERS) and not name.endswith(("-gcc", "-g++")):
                (folder / name).symlink_to(program)
    assert not any(shutil.which(c, path=str(folder)) for c in ("gcc", "g++", "cc", "c++", "clang"))
    return {"PATH": str(folder), "CXX": "/nonexistent/g++", "CC": "/nonexistent/gcc"}


def target_args(*configurations: str, dataset: str = "990", plans: str | None = None, trainer: str = CPU_TRAINER,
                cache: Path | str | None = None) -> list[str]:
    """The target flags of `warm`, `status` and `list` for CPU targets: -d -c [-p] -tr --device cpu [--cache-dir]."""
    return ["-d", dataset, "-c", *configurations, *(["-p", plans] if plans else []), "-tr", trainer,
            "--device", "cpu", *(["--cache-dir", str(cache)] if cache is not None else [])]


def warm_command(cache: Path, configuration: str, *extra: str) -> list[str]:
    """`nnunet-warmer warm` of one Dataset990 configuration on the CPU test trainer."""
    return [str(BIN / "nnunet-warmer"), "warm", *target_args(configuration, cache=cache), *extra]


def warm_e2e_cache(paths: NnunetPaths, e2e_cache: tuple[Path, dict[str, dict]], configurations: list[str]
                   ) -> list[dict]:
    """Warm the Dataset990 configurations the session's shared end-to-end cache lacks yet (each once per
    session); the warm report of each configuration asked for."""
    cache, reports = e2e_cache
    missing = [c for c in configurations if c not in reports]
    if missing:
        result = cli("warm", *target_args(*missing, cache=cache), "--json", env=job_env(paths))
        assert result.returncode == 0, result.stderr[-3000:]
        for report in json.loads(result.stdout)["targets"]:
            reports[report["target"]["configuration"]] = report
    return [reports[c] for c in configurations]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run `nnunet-warmer` as a user would, in a fresh process."""
    return subprocess.run([str(BIN / "nnunet-warmer"), *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def train_command(dataset: str, configuration: str, plans: str = "nnUNetPlans", trainer: str = CPU_TRAINER,
                  *extra: str) -> list[str]:
    """A real `nnUNetv2_train` of fold 0 on the CPU."""
    return [str(BIN / "nnUNetv2_train"), dataset, configuration, "0", "-tr", trainer, "-p", plans, "-device", "cpu",
            *extra]


def run_under_warmer(cache: Path, summary_file: Path, command: list[str], env: dict[str, str],
                     *options: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`nnunet-warmer run -- COMMAND`, which must exit 0; its output and the summary it wrote."""
    result = cli("run", "--cache-dir", str(cache), "--json", str(summary_file), *options, "--", *command, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads(summary_file.read_text())


def lock_path(cache: Path, configuration: str) -> Path:
    """Where `warm` of a Dataset990 configuration on the CPU test trainer takes its lock (needs nnU-Net's env)."""
    dp = load_plans("990", "nnUNetPlans")
    (target,) = build_targets(dp, [configuration], CPU_TRAINER, ["cpu"])
    environment = JobEnvironment.with_profile("default")
    return CacheDir(cache).lock_path(target.key, fingerprint_id(target_fingerprint(dp, target, environment)))


def write_old_format_plans(paths: NnunetPaths) -> str:
    """Dataset990's plans rewritten in nnU-Net's old format (`UNet_class_name`, `pool_op_kernel_sizes`, ...), which
    nnU-Net converts on load; returns the plans identifier."""
    folder = paths.preprocessed / f"Dataset{DEFAULT_DATASET_ID:03d}_WarmerDemo"
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    plans["plans_name"] = "nnUNetPlansOld"
    plans["configurations"] = {name: _old_format(c) for name, c in plans["configurations"].items()}
    (folder / "nnUNetPlansOld.json").write_text(json.dumps(plans))
    return "nnUNetPlansOld"


def _old_format(configuration: dict) -> dict:
    arch = configuration["architecture"]["arch_kwargs"]
    old = {k: v for k, v in configuration.items() if k != "architecture"}
    old.update({
        "UNet_class_name": "PlainConvUNet",
        "UNet_base_num_features": arch["features_per_stage"][0],
        "unet_max_num_features": arch["features_per_stage"][-1],
        "n_conv_per_stage_encoder": arch["n_conv_per_stage"],
        "n_conv_per_stage_decoder": arch["n_conv_per_stage_decoder"],
        "conv_kernel_sizes": arch["kernel_sizes"],
        "pool_op_kernel_sizes": arch["strides"],
        "num_pool_per_axis": [sum(1 for stride in arch["strides"] if stride[axis] > 1)
                              for axis in range(len(arch["strides"][0]))],
    })
    return old
