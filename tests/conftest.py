"""Shared fixtures: synthetic datasets planned by nnU-Net's real planner, once per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from warmer.demo import CPU_TRAINERS_DIR
from warmer.demo.synthetic import DEFAULT_DATASET_ID, NnunetPaths, plan_and_preprocess, write_raw_dataset

CPU_TRAINER = "nnUNetTrainerCPUCompile_2it"
BIN = Path(sys.executable).parent
TEST_TRAINERS_DIR = Path(__file__).parent / "trainers"
CONCURRENT_WARMERS = 4
CONCURRENT_CONFIGURATION = "2d"


def job_env(paths: NnunetPaths, **extra: str) -> dict[str, str]:
    """What a warmer or training process of the tests needs besides our environment: the datasets, and the CPU
    trainers (the warmer's and the tests' own)."""
    return {**paths.environment(),
            "nnUNet_extTrainer": os.pathsep.join([str(CPU_TRAINERS_DIR), str(TEST_TRAINERS_DIR)]), **extra}


def warm_command(cache: Path, configuration: str, *extra: str) -> list[str]:
    """`nnunet-warmer warm` of one Dataset990 configuration on the CPU test trainer."""
    return [str(BIN / "nnunet-warmer"), "warm", "-d", "990", "-c", configuration, "-tr", CPU_TRAINER,
            "--device", "cpu", "--cache-dir", str(cache), *extra]


def pytest_configure(config: pytest.Config) -> None:
    """Fewer of nnU-Net's spawned workers in every job the tests start: its defaults (up to 12 augmentation and
    8 export processes, each importing torch) cost about 25 s per training on 2 cores and compile nothing. The
    export count stays at the core count: nnUNetv2_predict runs with min(nnUNet_def_n_proc, cores) torch
    threads, and on CPU the thread count is part of inductor's cache keys (1 missed a graph warmed with 2)."""
    os.environ.setdefault("nnUNet_n_proc_DA", "1")
    os.environ.setdefault("nnUNet_def_n_proc", str(os.cpu_count()))


def pytest_report_header() -> str:
    from importlib import metadata

    return f"nnunetv2 {metadata.version('nnunetv2')} from {Path(__import__('nnunetv2').__file__).parent}"


@pytest.fixture(scope="session")
def planned(tmp_path_factory: pytest.TempPathFactory) -> NnunetPaths:
    """Dataset990: 6 synthetic 32x40x40 cases, planned and preprocessed for 2d and 3d_fullres."""
    paths = NnunetPaths(tmp_path_factory.mktemp("nnunet"))
    write_raw_dataset(paths)
    plan_and_preprocess(paths, DEFAULT_DATASET_ID, ["2d", "3d_fullres"])
    return paths


@pytest.fixture(scope="session")
def e2e_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    """One shared cache for the end-to-end tests, and the warm report of each Dataset990 configuration
    warmed into it so far (see test_end_to_end's `warmed`)."""
    return tmp_path_factory.mktemp("shared") / "torch-cache", {}


@pytest.fixture(scope="session")
def concurrently_warmed(planned: NnunetPaths, tmp_path_factory: pytest.TempPathFactory
                        ) -> tuple[Path, list[tuple[int, str, str]]]:
    """Dataset990 2d warmed by 4 `nnunet-warmer warm` processes started at once into one new cache:
    the cache, and each process's (exit code, stdout, stderr). The concurrency test checks the outcome; the
    fault-injection test starts its trials from copies of this cache, so it pays no cold compile of its own."""
    cache = tmp_path_factory.mktemp("concurrent") / "shared-cache"
    env = {**os.environ, **job_env(planned)}
    processes = [subprocess.Popen(warm_command(cache, CONCURRENT_CONFIGURATION, "--json"), env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(CONCURRENT_WARMERS)]
    outputs = [p.communicate(timeout=1200) for p in processes]
    return cache, [(p.returncode, out, err) for p, (out, err) in zip(processes, outputs, strict=True)]


@pytest.fixture
def nnunet_env(planned: NnunetPaths, monkeypatch: pytest.MonkeyPatch) -> NnunetPaths:
    for key, value in planned.environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("nnUNet_extTrainer", str(CPU_TRAINERS_DIR))
    return planned


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run `nnunet-warmer` as a user would, in a fresh process."""
    return subprocess.run([str(BIN / "nnunet-warmer"), *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


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
