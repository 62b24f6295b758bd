"""End to end: real planner -> `nnunet-warmer warm` -> real `nnUNetv2_train` under `nnunet-warmer run`.

The acceptance of the core: zero FX-graph and zero AOTAutograd misses over a whole real training run
(train, validation, final validation) for 2d and 3d_fullres; and plans edited to another batch size after
the warm give misses, explained by the fingerprint part that differs, so the check can fail.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from warmer.cache.checksums import digest
from warmer.cache.layout import CacheDir
from warmer.run.command import NnunetCommand
from warmer.run.explain import explain_misses
from warmer.values.counters import Counters
from warmer.values.profiles import JobEnvironment
from warmer.values.targets import TargetKey

from .helpers import CPU_TRAINER, cli, job_env, run_under_warmer, target_args, train_command, warm_e2e_cache

pytestmark = pytest.mark.e2e
CONFIGURATIONS = ["2d", "3d_fullres"]


@pytest.fixture
def warmed(planned, e2e_cache, request) -> tuple[Path, list[dict]]:
    """The cache with the configurations this test needs warmed (each warmed once per session, so selecting
    one configuration with -k warms only that one)."""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    needed = [params["configuration"]] if "configuration" in params else CONFIGURATIONS
    return e2e_cache[0], warm_e2e_cache(planned, e2e_cache, needed)


def _train_under_run(planned, cache: Path, configuration: str, tmp_path: Path, plans: str = "nnUNetPlans",
                     env: dict[str, str] | None = None, *options: str) -> dict:
    env = {**(env or job_env(planned)), "nnUNet_results": str(tmp_path / "results")}
    result, summary = run_under_warmer(cache, tmp_path / f"run-{configuration}.json",
                                       train_command("990", configuration, plans), env, *options)
    assert "nnunet-warmer: FX graphs" in result.stderr.splitlines()[-1]
    # quiet: nothing from the compiler stack that says nothing about the job
    assert "No CUDA runtime is found" not in result.stderr and "torch.jit.interface" not in result.stderr
    return summary


def test_warm_verifies_every_target(warmed) -> None:
    cache, reports = warmed
    assert [t["state"] for t in reports] == ["warm", "warm"]
    for target in reports:
        assert target["verify"]["counters"]["fx_miss"] == 0 and target["verify"]["counters"]["aot_miss"] == 0
        assert target["cold"]["counters"]["fx_miss"] > 0
        assert Path(target["manifest"]).is_file()


def test_status_is_warm_and_exits_0(planned, warmed) -> None:
    cache, _ = warmed
    result = cli("status", *target_args(*CONFIGURATIONS, cache=cache), "--json", env=job_env(planned))
    assert result.returncode == 0, result.stdout + result.stderr
    assert [t["state"] for t in json.loads(result.stdout)["targets"]] == ["warm", "warm"]


def test_status_names_the_fingerprint_part_that_differs(planned, warmed) -> None:
    cache, _ = warmed
    result = cli("status", *target_args("3d_fullres", cache=cache),
                 env={**job_env(planned), "TORCH_COMPILE_CACHE_KEY_TAG": "other"})
    assert result.returncode == 1
    assert result.stdout.startswith("stale") and "cache_key_tag" in result.stdout


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_real_training_misses_nothing(planned, warmed, tmp_path, configuration: str) -> None:
    cache, _ = warmed
    summary = _train_under_run(planned, cache, configuration, tmp_path)
    assert summary["fx_miss"] == 0 and summary["aot_miss"] == 0, summary
    assert summary["fx_hit"] > 0 and summary["aot_hit"] > 0
    # the default profile is plain nnU-Net: automatic dynamic shapes make symbolic-shape graphs (the dice loss
    # over the deep-supervision scales); the static profile test in test_variants shows zero
    assert summary["symbols"] > 0, summary


def test_damage_is_named_survived_by_training_then_repaired(planned, warmed, tmp_path) -> None:
    """A copy of the warmed cache with each kind of file damaged, among those the 2d manifest lists: every FX
    entry truncated, every generated Python file garbled (torch crashes a job that imports one), two
    AOTAutograd entries garbled, three kernel `.so` files truncated; and the 3d_fullres manifest garbled.
    `check` names them all and `status` says damaged; a real 2d training job started in place before anyone
    repaired the cache exits 0, because `run` sets the 2d target's damage aside first (and only that: the 3d_fullres
    manifest is another target's); `warm` then re-warms, and the next training misses nothing."""
    cache, _ = warmed
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    plans = copy / "manifests" / "Dataset990_WarmerDemo" / "nnUNetPlans"
    (listed_2d,) = [sorted(copy / e for e in json.loads(m.read_text())["entries"]) for m in plans.glob("2d/*/*.json")]
    (manifest,) = plans.glob("3d_fullres/*/*.json")  # its entries can no longer be checked: damage only 2d's
    fx_entries = [p for p in listed_2d if "fxgraph" in p.parts]
    generated = [p for p in listed_2d if p.suffix == ".py"]
    aot_entries = [p for p in listed_2d if "aotautograd" in p.parts][:2]
    kernels = [p for p in listed_2d if p.suffix == ".so"][:3]  # a few: the job rebuilds each one it needs
    for path in fx_entries + kernels:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for path in generated + aot_entries + [manifest]:
        path.write_bytes(b"\x1b" + path.read_bytes())
    damaged = fx_entries + generated + aot_entries + kernels + [manifest]
    check = cli("check", "--cache-dir", str(copy), "--json", env=job_env(planned))
    assert check.returncode == 1, check.stderr
    assert {str(p) for p in damaged} <= {d["path"] for d in json.loads(check.stdout)["damaged"]}
    target = target_args("2d", cache=copy)
    status = cli("status", *target, env=job_env(planned))
    assert status.returncode == 1 and status.stdout.startswith("damaged"), status.stdout

    (tmp_path / "unrepaired").mkdir()
    unrepaired = _train_under_run(planned, copy, "2d", tmp_path / "unrepaired", "nnUNetPlans", None, "--in-place")
    assert unrepaired["fx_miss"] > 0, unrepaired  # it compiled what was set aside
    moved = {p.relative_to(next((copy / "quarantine").iterdir())) for p in (copy / "quarantine").rglob("*")}
    assert {p.relative_to(copy) for p in damaged if p != manifest} <= moved
    assert manifest.relative_to(copy) not in moved and manifest.exists()
    assert not any(p.exists() and p.read_bytes().startswith(b"\x1b") for p in generated)

    repaired = cli("warm", *target, "--json", env=job_env(planned))
    assert repaired.returncode == 0, repaired.stderr[-3000:]
    (report,) = json.loads(repaired.stdout)["targets"]
    assert report["state"] == "warm" and report["verify"]["counters"]["fx_miss"] == 0
    assert cli("status", *target, env=job_env(planned)).returncode == 0
    summary = _train_under_run(planned, copy, "2d", tmp_path)
    assert summary["fx_miss"] == 0 and summary["aot_miss"] == 0 and summary["fx_hit"] > 0, summary


def test_stats_sum_the_warms_and_runs(planned, warmed) -> None:
    cache, _ = warmed
    result = cli("stats", "--cache-dir", str(cache), "--json", env=job_env(planned))
    assert result.returncode == 0, result.stderr
    totals = json.loads(result.stdout)["totals"]
    assert totals["warms"] == 2 and totals["runs"] == len(CONFIGURATIONS)
    assert totals["fx_miss"] == 0 and totals["fx_hit"] > 0
    assert totals["estimated_seconds_saved"] > 0


def test_run_with_another_batch_size_names_it(planned, warmed, tmp_path) -> None:
    """Plans edited after the warm (batch 2 -> 3): status and the run's explanation both name batch_per_rank."""
    cache, _ = warmed
    folder = planned.preprocessed / "Dataset990_WarmerDemo"
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    plans["plans_name"] = "nnUNetPlansBS"
    (folder / "nnUNetPlansBS.json").write_text(json.dumps(plans))
    result = cli("warm", *target_args("3d_fullres", plans="nnUNetPlansBS", cache=cache), env=job_env(planned))
    assert result.returncode == 0, result.stderr[-3000:]
    plans["configurations"]["3d_fullres"]["batch_size"] = 3
    (folder / "nnUNetPlansBS.json").write_text(json.dumps(plans))
    status = cli("status", *target_args("3d_fullres", plans="nnUNetPlansBS", cache=cache), env=job_env(planned))
    assert status.returncode == 1 and status.stdout.startswith("stale"), status.stdout
    assert "batch_per_rank: 2 (cache) != 3 (here)" in status.stdout
    summary = _train_under_run(planned, cache, "3d_fullres", tmp_path, plans="nnUNetPlansBS")
    assert summary["fx_miss"] > 0, summary
    assert "the cache was warmed for another environment" in summary["explanation"]
    assert "batch_per_rank: 2 (cache) != 3 (here)" in summary["explanation"]
    assert "nnunet-warmer warm -d Dataset990_WarmerDemo -c 3d_fullres" in summary["explanation"]


def test_misses_without_a_manifest_say_cold_and_how_to_warm(nnunet_env, tmp_path) -> None:
    command = NnunetCommand(TargetKey("990", "nnUNetPlans", "3d_fullres", CPU_TRAINER), "cpu")
    line = explain_misses(CacheDir(tmp_path / "empty"), command, Counters(fx_miss=4, aot_miss=2),
                          JobEnvironment.with_profile("default"))
    label = f"Dataset990_WarmerDemo/nnUNetPlans/3d_fullres/{CPU_TRAINER}"
    assert line.startswith(f"the cache was cold for {label} (6 misses)")
    assert "warm it with: nnunet-warmer warm -d Dataset990_WarmerDemo -c 3d_fullres" in line
    assert not (tmp_path / "empty").exists()


def test_misses_name_the_fingerprint_part_that_differs(planned, warmed, tmp_path) -> None:
    cache, _ = warmed
    env = {**job_env(planned), "TORCH_COMPILE_CACHE_KEY_TAG": "another-team"}
    summary = _train_under_run(planned, cache, "2d", tmp_path, env=env)
    assert summary["fx_miss"] > 0
    assert "warmed for another environment: cache_key_tag:" in summary["explanation"]
    assert "another-team (here)" in summary["explanation"]


def _copy(source: Path, destination: Path, relative_paths: list[str]) -> None:
    for relative in relative_paths:
        (destination / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / relative, destination / relative)


def test_one_closure_at_another_path_serves_real_training_without_building_kernels(planned, warmed, tmp_path) -> None:
    """Completeness of the closure: a cache dir holding only the 2d target's manifest and the files it lists, at
    another path, serves a real training with zero misses, and no kernel is built (no new .so: a C++ compiler
    started by inductor, for a kernel or for its ISA probe, leaves one)."""
    cache, _ = warmed
    (manifest,) = (cache / "manifests" / "Dataset990_WarmerDemo" / "nnUNetPlans").glob("2d/*/*.json")
    entries = list(json.loads(manifest.read_text())["entries"])
    alone = tmp_path / "elsewhere" / "cache"
    _copy(cache, alone, [*entries, str(manifest.relative_to(cache))])
    everything = [p for p in (cache / "inductor").rglob("*") if p.is_file()]
    assert 0 < len(entries) < len(everything), "the closure is a part of the cache"
    assert cli("status", *target_args("2d", cache=alone), env=job_env(planned)).returncode == 0
    kernels = sorted(alone.rglob("*.so"))
    summary = _train_under_run(planned, alone, "2d", tmp_path)
    assert summary["fx_miss"] == 0 and summary["aot_miss"] == 0 and summary["fx_hit"] > 0, summary
    assert summary["compiled_locally"] == 0, "the job built a kernel (or wrote other cache files) in its local copy"
    assert sorted(alone.rglob("*.so")) == kernels, "a kernel was built"


def test_a_format_1_manifest_is_warm_and_a_reverify_rewrites_it_with_its_closure(planned, warmed, tmp_path) -> None:
    """Manifests written before closures listed the whole cache: they still count as warm, and the next `warm`
    (a re-verify, no compile) rewrites them with the closure."""
    cache, _ = warmed
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    (path,) = (copy / "manifests" / "Dataset990_WarmerDemo" / "nnUNetPlans").glob("3d_fullres/*/*.json")
    old = json.loads(path.read_text())
    closure = set(old["entries"])
    whole = {str(p.relative_to(copy)): digest(p) for p in (copy / "inductor").rglob("*")
             if p.is_file() and "locks" not in p.parts}
    path.write_text(json.dumps({**old, "manifest_version": 1, "entries": whole}))
    target = target_args("3d_fullres", cache=copy)
    assert cli("status", *target, env=job_env(planned)).returncode == 0
    result = cli("warm", *target, "--json", env=job_env(planned))
    assert result.returncode == 0, result.stderr[-3000:]
    assert [t["state"] for t in json.loads(result.stdout)["targets"]] == ["already-warm"]
    rewritten = json.loads(path.read_text())
    assert rewritten["manifest_version"] == 2 and set(rewritten["entries"]) == closure < set(whole)
