"""Errors a user can cause: one line naming problem and fix, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from warmer.cli import main
from warmer.errors import UserError
from warmer.values.compat import check_nnunet_version

from .helpers import CPU_TRAINER, cli


def _broken_plans(nnunet_env, name: str, content: str) -> str:
    folder = nnunet_env.preprocessed / "Dataset990_WarmerDemo"
    (folder / f"{name}.json").write_text(content)
    return name


CASES = {
    "no such dataset": lambda env, tmp: ["-d", "123"],
    "bad dataset id": lambda env, tmp: ["-d", "banana"],
    "plans file missing": lambda env, tmp: ["-d", "990", "-p", "nnUNetPlansNope"],
    "plans JSON malformed": lambda env, tmp: ["-d", "990", "-p", _broken_plans(env, "Malformed", "{not json")],
    "plans without configurations": lambda env, tmp: ["-d", "990", "-p", _broken_plans(env, "NoConf", "{}")],
    "plans missing keys": lambda env, tmp: ["-d", "990", "-p", _broken_plans(
        env, "MissingKeys", json.dumps({"configurations": {"3d_fullres": {"patch_size": [8, 8, 8]}}}))],
    "unknown configuration": lambda env, tmp: ["-d", "990", "-c", "3d_hugeres"],
    "unknown trainer": lambda env, tmp: ["-d", "990", "-tr", "nnUNetTrainerDoesNotExist"],
    "cuda without cuda": lambda env, tmp: ["-d", "990", "--device", "cuda"] if not torch.cuda.is_available()
    else ["-d", "990", "--device", "cuda:99"],
    "unknown device": lambda env, tmp: ["-d", "990", "--device", "tpu"],
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["list", "warm", "status"])
def test_bad_input_is_one_line_and_exit_2(nnunet_env, tmp_path, capsys, case: str, command: str) -> None:
    cache = tmp_path / "cache"
    args = [command, *CASES[case](nnunet_env, tmp_path)]
    if command != "list":
        args += ["--cache-dir", str(cache)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nnunet-warmer: error: ") and ":" in err[0][22:], err
    assert not cache.exists()


def test_preprocessed_unset(monkeypatch, capsys) -> None:
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    assert main(["list", "-d", "990"]) == 2
    assert "export nnUNet_preprocessed" in capsys.readouterr().err


def test_dataset_json_without_channels(nnunet_env, capsys) -> None:
    folder = nnunet_env.preprocessed / "Dataset990_WarmerDemo"
    original = (folder / "dataset.json").read_text()
    broken = {k: v for k, v in json.loads(original).items() if k != "channel_names"}
    (folder / "dataset.json").write_text(json.dumps(broken))
    try:
        assert main(["list", "-d", "990"]) == 2
    finally:
        (folder / "dataset.json").write_text(original)
    assert "channel_names" in capsys.readouterr().err


def test_cache_dir_not_a_directory(nnunet_env, tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["warm", "-d", "990", "-tr", CPU_TRAINER, "--device", "cpu",
                 "--cache-dir", str(blocker / "cache")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("command", [["ls"], ["check"], ["gc", "--max-size", "1G"], ["stats"], ["stats", "--zero"],
                                     ["stats", "--metrics-file", "METRICS"]])
def test_a_cache_dir_that_does_not_exist_is_one_line_for_commands_that_read_it(tmp_path, capsys, command) -> None:
    missing, metrics = tmp_path / "mistyped-cache", tmp_path / "warmer.prom"
    args = [str(metrics) if arg == "METRICS" else arg for arg in command]
    assert main([*args, "--cache-dir", str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured
    assert f"cache dir {missing} does not exist" in captured.err and "--cache-dir" in captured.err
    assert sorted(tmp_path.iterdir()) == []


def test_run_without_command_or_unknown_command(tmp_path, capsys) -> None:
    assert main(["run", "--cache-dir", str(tmp_path / "c")]) == 2
    assert main(["run", "--cache-dir", str(tmp_path / "c"), "--", "no-such-command-xyz"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 2


def test_no_traceback_from_the_installed_command(nnunet_env, tmp_path) -> None:
    result = cli("warm", "-d", "990", "-p", "nnUNetPlansNope", "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("nnunet-warmer: error: plans file")


def test_trainer_that_does_not_compile_here_writes_nothing(nnunet_env, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    result = cli("warm", "-d", "990", "-c", "3d_fullres", "--device", "cpu", "--cache-dir", str(cache))
    assert result.returncode == 0, result.stderr
    assert "does not use torch.compile on cpu" in result.stdout
    assert len(result.stdout.strip().splitlines()) == 1
    assert not cache.exists()


@pytest.mark.parametrize("version", ["2.5.2", "2.9.0", "3.0", "main"])
def test_unsupported_nnunet_versions_are_refused(version: str) -> None:
    with pytest.raises(UserError, match="pip install 'nnunetv2>=2.6,<2.9'"):
        check_nnunet_version(version)


@pytest.mark.parametrize("version", ["2.6.0", "2.6.4", "2.7.0", "2.8.1"])
def test_supported_nnunet_versions_pass(version: str) -> None:
    assert check_nnunet_version(version) == version


@pytest.mark.parametrize("command", ["list", "warm", "status"])
def test_a_trainer_folder_with_a_broken_module_is_one_line_naming_the_file(nnunet_env, tmp_path, command) -> None:
    """nnU-Net imports every module of a trainer folder to find one class: a user's typo in another file must
    be named in one line, not a 30-line traceback, whichever trainer was asked for."""
    folder = tmp_path / "trainers"
    folder.mkdir()
    (folder / "aa_typo.py").write_text("from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainr\n")
    (folder / "zz_good.py").write_text(f"from warmer.demo.trainers.nnUNetTrainerCPUCompile import {CPU_TRAINER}\n\n\n"
                                       f"class nnUNetTrainerGood({CPU_TRAINER}):\n    pass\n")
    cache = tmp_path / "cache"
    env = {**nnunet_env.environment(), "nnUNet_extTrainer": str(folder)}
    result = cli(command, "-d", "990", "-c", "2d", "-tr", "nnUNetTrainerGood", "--device", "cpu",
                 *(["--cache-dir", str(cache)] if command != "list" else []), env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(folder / "aa_typo.py") in lines[0] and "nnUNetTrainr" in lines[0], lines[0]
    assert not cache.exists()



def test_metrics_without_prometheus_client_are_one_line_naming_the_extra(tmp_path, monkeypatch, capsys) -> None:
    from warmer.service.metrics import ServiceMetrics

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # what `import` then cannot find
    extra = "metrics need prometheus_client: pip install 'nnunet-warmer[metrics]'"
    (tmp_path / "cache").mkdir()
    assert main(["stats", "--cache-dir", str(tmp_path / "cache"), "--metrics-file", str(tmp_path / "m.prom")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"nnunet-warmer: error: {extra}"]
    with pytest.raises(UserError, match=re.escape(extra)):
        ServiceMetrics(tmp_path / "m.prom", None, "127.0.0.1")
    assert not (tmp_path / "m.prom").exists()
