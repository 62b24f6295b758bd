"""Shared fixtures: one synthetic dataset planned by nnU-Net's real planner for the whole session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from warmer import CPU_TRAINERS_DIR
from warmer.synthetic import DEFAULT_DATASET_ID, NnunetPaths, plan_and_preprocess, write_raw_dataset

CPU_TRAINER = "nnUNetTrainerCPUCompile_2it"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def planned(tmp_path_factory: pytest.TempPathFactory) -> NnunetPaths:
    """Dataset990: 6 synthetic 32x40x40 cases, planned and preprocessed for 2d and 3d_fullres."""
    paths = NnunetPaths(tmp_path_factory.mktemp("nnunet"))
    write_raw_dataset(paths)
    plan_and_preprocess(paths, DEFAULT_DATASET_ID, ["2d", "3d_fullres"])
    return paths


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
