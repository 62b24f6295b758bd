"""Shared fixtures: synthetic datasets planned by nnU-Net's real planner, once per session."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from warmer.demo import CPU_TRAINERS_DIR
from warmer.demo.synthetic import DEFAULT_DATASET_ID, NnunetPaths, plan_and_preprocess, write_raw_dataset

from .helpers import CONCURRENT_CONFIGURATION, CONCURRENT_WARMERS, job_env, warm_command


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
