"""DDP: every rank gets the batch share nnU-Net's own trainer computes, and a DDP warm makes nnU-Net's own DDP
training miss nothing.

nnU-Net's `_set_batch_size_and_oversample` reads the world size and rank from torch.distributed, so the test
starts a real gloo process group of N CPU processes and asks nnU-Net's trainer in each one. The end-to-end
test warms 2 ranks on CPU (gloo), then runs nnU-Net's DDP launcher and training (`tests/ddp_cpu_train.py`,
nnUNetv2_train with gloo in place of NCCL) under `nnunet-warmer run`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from warmer.cli import main
from warmer.pipeline.warm import free_local_port

from .helpers import CPU_TRAINER, cli

DDP_TRAIN = Path(__file__).parent / "ddp_cpu_train.py"


def _nnunet_batch_of_rank(rank: int, world_size: int, port: int, env: dict[str, str], shares: dict) -> None:
    os.environ.update(env)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        from nnunetv2.run.run_training import get_trainer_from_args

        trainer = get_trainer_from_args("990", "2d", 0, CPU_TRAINER, "nnUNetPlans", device=torch.device("cpu"))
        trainer._set_batch_size_and_oversample()
        shares[rank] = trainer.batch_size
    finally:
        dist.destroy_process_group()


def test_listed_rank_batches_match_nnunet_split(nnunet_env, capsys, tmp_path) -> None:
    world_size = 3
    assert main(["list", "-d", "990", "-c", "2d", "-tr", CPU_TRAINER, "--num-gpus", str(world_size), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["targets"]
    assert [t["target"]["rank"] for t in listed] == list(range(world_size))
    assert [t["target"]["device"] for t in listed] == [f"cuda:{r}" for r in range(world_size)]
    assert all(f"DDP rank {t['target']['rank']} of {world_size}" in " ".join(t["variant_paths"]) for t in listed)

    env = {**{k: os.environ[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_extTrainer")},
           "nnUNet_results": str(tmp_path / "results")}
    with mp.Manager() as manager:
        shares = manager.dict()
        mp.spawn(_nnunet_batch_of_rank, args=(world_size, free_local_port(), env, shares), nprocs=world_size)
        nnunet = [shares[r] for r in range(world_size)]
    assert [t["target"]["batch_per_rank"] for t in listed] == nnunet
    assert sum(nnunet) > world_size and len(set(nnunet)) > 1, "choose a world size that splits the batch unevenly"
    for target in listed:
        assert all(call["inputs"][0]["shape"][0] in (target["target"]["batch_per_rank"], 1)
                   for call in target["calls"] if call["function"] == "network")


def test_more_gpus_than_batch_is_refused_like_nnunet(nnunet_env, capsys) -> None:
    assert main(["list", "-d", "990", "-c", "3d_fullres", "-tr", CPU_TRAINER, "--num-gpus", "8"]) == 2
    assert "smaller than --num-gpus 8" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["warm", "status"])
def test_more_gpus_than_here_is_refused_with_a_fix(nnunet_env, capsys, tmp_path, command: str) -> None:
    assert main([command, "-d", "990", "-c", "2d", "-tr", CPU_TRAINER, "--num-gpus", "2", "--device", "cuda",
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warm on a node with 2 GPUs" in err
    assert not (tmp_path / "cache").exists()


@pytest.mark.e2e
def test_ddp_warm_then_nnunet_ddp_training_misses_nothing(nnunet_env, tmp_path) -> None:
    cache = str(tmp_path / "cache")
    ddp = ["-d", "990", "-c", "2d", "-tr", CPU_TRAINER, "--num-gpus", "2", "--device", "cpu", "--cache-dir", cache]
    warmed = cli("warm", *ddp, "--json")
    assert warmed.returncode == 0, warmed.stderr[-3000:]
    reports = json.loads(warmed.stdout)["targets"]
    assert [(t["target"]["rank"], t["target"]["batch_per_rank"], t["state"]) for t in reports] == \
        [(0, 5, "warm"), (1, 5, "warm")]
    for report in reports:
        counters = report["verify"]["counters"]
        assert counters["fx_hit"] > 0 and counters["fx_miss"] == counters["aot_miss"] == counters["fx_bypass"] == 0
    assert cli("status", *ddp).returncode == 0

    summary_file = tmp_path / "run.json"
    trained = cli("run", "--cache-dir", cache, "--json", str(summary_file), "--", sys.executable, str(DDP_TRAIN),
                  "990", "2d", "0", "-tr", CPU_TRAINER, "-num_gpus", "2",
                  env={"nnUNet_results": str(tmp_path / "results"), "nnUNet_def_n_proc": "1"})
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = json.loads(summary_file.read_text())
    assert "Mean Validation Dice" in trained.stdout + trained.stderr
    assert summary["processes"] >= 3, "the launcher and one process per rank"
    assert summary["fx_hit"] > 0 and summary["fx_miss"] == 0 and summary["aot_miss"] == 0, summary
