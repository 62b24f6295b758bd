"""A small synthetic dataset in nnU-Net's raw format, planned and preprocessed by nnU-Net's real tools.

Used by the demo, the tests and the benchmarks: nnU-Net's own planner turns it into real plans, so what
gets warmed is what nnU-Net would train, only small enough for a CPU.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmer.demo import CPU_TRAINERS_DIR

DEFAULT_DATASET_ID = 990
DEFAULT_NAME = "WarmerDemo"


@dataclass(frozen=True)
class NnunetPaths:
    """The three nnU-Net folders under one work directory."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "nnUNet_results"

    def environment(self) -> dict[str, str]:
        return {"nnUNet_raw": str(self.raw), "nnUNet_preprocessed": str(self.preprocessed),
                "nnUNet_results": str(self.results)}


def write_raw_dataset(paths: NnunetPaths, dataset_id: int = DEFAULT_DATASET_ID, name: str = DEFAULT_NAME,
                      cases: int = 6, shape: tuple[int, int, int] = (32, 40, 40), channels: int = 1,
                      spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), regions: bool = False,
                      ignore_label: bool = False, seed: int = 0) -> str:
    """Write `cases` 3D images with two foreground labels (a ball and a box) plus dataset.json.

    `regions`: region-based labels (whole = ball or box; box) with regions_class_order. `ignore_label`: label 3
    on a slab of every case is declared "ignore". `spacing` is (z, y, x).
    """
    import numpy as np
    import SimpleITK
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    dataset_name = f"Dataset{dataset_id:03d}_{name}"
    folder = paths.raw / dataset_name
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    for case in range(cases):
        seg = np.zeros(shape, dtype=np.uint8)
        center = [s // 2 + rng.integers(-3, 4) for s in shape]
        radius = min(shape) // 4
        ball = (zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2 < radius**2
        seg[ball] = 1
        corner = [rng.integers(1, max(2, s // 6)) for s in shape]
        seg[corner[0]:corner[0] + max(1, shape[0] // 5), corner[1]:corner[1] + shape[1] // 5,
            corner[2]:corner[2] + shape[2] // 5] = 2
        if ignore_label:
            seg[:, :, -max(1, shape[2] // 8):] = 3
        case_id = f"case_{case:03d}"
        for channel in range(channels):
            image = (seg * (40.0 + 10 * channel) + rng.normal(100, 10, shape)).astype(np.float32)
            _write_image(SimpleITK, image, spacing, folder / "imagesTr" / f"{case_id}_{channel:04d}.nii.gz")
        _write_image(SimpleITK, seg, spacing, folder / "labelsTr" / f"{case_id}.nii.gz")
    label_dict: dict[str, int | tuple[int, ...]] = {"background": 0, "ball": 1, "box": 2}
    regions_class_order = None
    if regions:
        label_dict = {"background": 0, "whole": (1, 2), "box": (2,)}
        regions_class_order = (1, 2)
    if ignore_label:
        label_dict["ignore"] = 3
    generate_dataset_json(str(folder), {i: f"synthetic{i}" for i in range(channels)}, label_dict, cases,
                          ".nii.gz", regions_class_order=regions_class_order, dataset_name=dataset_name)
    return dataset_name


def _write_image(sitk: Any, array: Any, spacing: tuple[float, float, float], path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))  # SimpleITK spacing is (x, y, z)
    sitk.WriteImage(image, str(path))


def plan_and_preprocess(paths: NnunetPaths, dataset_id: int, configurations: list[str],
                        extra_args: list[str] | None = None, log: Path | None = None) -> None:
    """Run the real `nnUNetv2_plan_and_preprocess`; its output goes to `log`, or to our stderr."""
    command = [entry_point("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", *configurations,
               "-np", "1", *(extra_args or [])]
    with open(log, "w") if log is not None else contextlib.nullcontext(sys.stderr) as output:
        subprocess.run(command, env={**os.environ, **paths.environment()}, check=True, stdout=output, stderr=output)


def use_demo_dataset(paths: NnunetPaths, configurations: list[str], say: Callable[[str], None],
                     log_dir: Path) -> None:
    """Point this process's nnU-Net variables (and the CPU trainers) at `paths`; plan the demo dataset once, the
    planner's output going to a log in `log_dir`."""
    os.environ.update(paths.environment())
    os.environ["nnUNet_extTrainer"] = str(CPU_TRAINERS_DIR)
    if not any(paths.preprocessed.glob(f"Dataset{DEFAULT_DATASET_ID:03d}_*/nnUNetPlans.json")):
        log = log_dir / "nnUNetv2_plan_and_preprocess.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        say(f"writing a synthetic dataset to {paths.raw} and planning it with nnUNetv2_plan_and_preprocess "
            f"(log: {log})")
        write_raw_dataset(paths)
        plan_and_preprocess(paths, DEFAULT_DATASET_ID, configurations, log=log)


def entry_point(name: str) -> str:
    """nnU-Net's console scripts live beside the running interpreter in a virtual environment."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name
