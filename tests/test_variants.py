"""Every nnU-Net variant a user trains, end to end: warm, then the real nnU-Net command under `nnunet-warmer run`
must miss nothing (zero FX-graph and zero AOTAutograd misses).

The datasets are synthetic and planned by nnU-Net's real planner; one dataset carries several variants where it can.
All of them share the cache that test_end_to_end warmed Dataset990 into, as the teams on a cluster would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import blosc2
import numpy as np
import pytest

from warmer.demo.synthetic import NnunetPaths, plan_and_preprocess, write_raw_dataset

from .helpers import (
    BIN,
    CPU_TRAINER,
    cli,
    job_env,
    run_under_warmer,
    target_args,
    train_command,
    write_old_format_plans,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def variants(planned: NnunetPaths) -> NnunetPaths:
    """Two more datasets beside Dataset990 (which also gets old-format plans):
    991: region-based labels plus an ignore label, two input channels, anisotropic spacing (first pooling
         stride 1x2x2), planned with the ResEnc M preset (nnUNetResEncUNetMPlans);
    993: images large for a 0.08 GB GPU budget, so the planner adds 3d_lowres and 3d_cascade_fullres."""
    write_raw_dataset(planned, 991, "RegionsIgnore", cases=5, shape=(12, 40, 40), channels=2,
                      spacing=(4.0, 1.0, 1.0), regions=True, ignore_label=True)
    plan_and_preprocess(planned, 991, ["3d_fullres"], ["-pl", "nnUNetPlannerResEncM"])
    write_raw_dataset(planned, 993, "Cascade", cases=5, shape=(48, 64, 64))
    plan_and_preprocess(planned, 993, ["3d_fullres", "3d_lowres"],
                        ["-gpu_memory_target", "0.08", "-overwrite_plans_name", "nnUNetPlansSmall"])
    write_old_format_plans(planned)
    return planned


@pytest.fixture(scope="session")
def shared_cache(e2e_cache: tuple[Path, dict]) -> Path:
    """The cache test_end_to_end warmed Dataset990 into: what a cluster's one shared cache holds by now."""
    return e2e_cache[0]


@pytest.fixture(scope="session")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("results")


def _warm(env: dict[str, str], cache: Path, dataset: str, configurations: list[str], plans: str, trainer: str,
          *options: str) -> None:
    result = cli("warm", *target_args(*configurations, dataset=dataset, plans=plans, trainer=trainer, cache=cache),
                 "--json", *options, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(t["state"] in ("warm", "already-warm") for t in json.loads(result.stdout)["targets"])


def _run(env: dict[str, str], cache: Path, summary_file: Path, command: list[str], *options: str) -> dict:
    return run_under_warmer(cache, summary_file, command, env, *options)[1]


def _train(env: dict[str, str], cache: Path, tmp_path: Path, dataset: str, configuration: str, plans: str,
           trainer: str) -> dict:
    command = train_command(dataset, configuration, plans, trainer)
    return _run(env, cache, tmp_path / f"train-{configuration}.json", command)


def _assert_misses_nothing(summary: dict) -> None:
    assert summary["fx_miss"] == 0 and summary["aot_miss"] == 0 and summary["fx_bypass"] == 0, summary
    assert summary["fx_hit"] > 0, summary


def test_validation_only_and_compiled_predict_miss_nothing(variants, shared_cache, results, tmp_path) -> None:
    env, plans = job_env(variants, nnUNet_results=str(results)), "nnUNetPlans"
    _warm(env, shared_cache, "990", ["3d_fullres"], plans, CPU_TRAINER)
    _assert_misses_nothing(_train(env, shared_cache, tmp_path, "990", "3d_fullres", plans, CPU_TRAINER))
    val = _run(env, shared_cache, tmp_path / "val.json", train_command("990", "3d_fullres", "nnUNetPlans",
                                                                       CPU_TRAINER, "--val"))
    _assert_misses_nothing(val)
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(variants.raw / "Dataset990_WarmerDemo" / "imagesTr" / "case_000_0000.nii.gz", images)
    predict = _run(job_env(variants, nnUNet_results=str(results), nnUNet_compile="1"), shared_cache,
                   tmp_path / "predict.json",
                   [str(BIN / "nnUNetv2_predict"), "-i", str(images), "-o", str(tmp_path / "predicted"), "-d", "990",
                    "-c", "3d_fullres", "-f", "0", "-tr", CPU_TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1"])
    _assert_misses_nothing(predict)
    assert (tmp_path / "predicted" / "case_000.nii.gz").is_file()


@pytest.mark.parametrize(("dataset", "plans", "trainer"), [
    pytest.param("991", "nnUNetResEncUNetMPlans", CPU_TRAINER, id="regions-ignore-2channels-anisotropic-resenc"),
    pytest.param("990", "nnUNetPlansOld", CPU_TRAINER, id="old-format-plans"),
    pytest.param("990", "nnUNetPlans", "nnUNetTrainerTestCustom", id="custom-loss-optimizer-no-deep-supervision"),
])
def test_variant_training_misses_nothing(variants, shared_cache, results, tmp_path, dataset, plans, trainer) -> None:
    env = job_env(variants, nnUNet_results=str(results))
    _warm(env, shared_cache, dataset, ["3d_fullres"], plans, trainer)
    _assert_misses_nothing(_train(env, shared_cache, tmp_path, dataset, "3d_fullres", plans, trainer))


def test_cascade_lowres_then_fullres_miss_nothing(variants, shared_cache, results, tmp_path) -> None:
    env, plans = job_env(variants, nnUNet_results=str(results)), "nnUNetPlansSmall"
    _warm(env, shared_cache, "993", ["3d_lowres", "3d_cascade_fullres"], plans, CPU_TRAINER)
    _assert_misses_nothing(_train(env, shared_cache, tmp_path, "993", "3d_lowres", plans, CPU_TRAINER))
    # the cascade reads the lowres predictions of every training case; 5-fold lowres training would make them,
    # here the preprocessed reference segmentations stand in (same files, same shapes)
    preprocessed = variants.preprocessed / "Dataset993_Cascade" / f"{plans}_3d_fullres"
    previous = (results / "Dataset993_Cascade" / f"{CPU_TRAINER}__{plans}__3d_lowres" / "predicted_next_stage"
                / "3d_cascade_fullres")
    previous.mkdir(parents=True, exist_ok=True)
    for seg in preprocessed.glob("*_seg.b2nd"):
        reference = blosc2.open(str(seg), mode="r")[:]  # (1, z, y, x); a previous stage writes (z, y, x)
        blosc2.asarray(np.ascontiguousarray(reference[0]), urlpath=str(previous / seg.name.replace("_seg", "")),
                       mode="w")
    _assert_misses_nothing(_train(env, shared_cache, tmp_path, "993", "3d_cascade_fullres", plans, CPU_TRAINER))


def test_static_profile_compiles_no_symbolic_shapes(variants, shared_cache, results, tmp_path) -> None:
    env = job_env(variants, nnUNet_results=str(results))
    _warm(env, shared_cache, "990", ["3d_fullres"], "nnUNetPlans", CPU_TRAINER, "--shapes", "static")
    command = train_command("990", "3d_fullres")
    summary = _run(env, shared_cache, tmp_path / "static.json", command, "--shapes", "static")
    _assert_misses_nothing(summary)
    assert summary["symbols"] == 0, summary
