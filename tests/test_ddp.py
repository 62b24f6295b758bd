"""DDP: `list --num-gpus N` gives every rank the batch share nnU-Net's own trainer computes.

nnU-Net's `_set_batch_size_and_oversample` reads the world size and rank from torch.distributed, so the test
starts a real gloo process group of N CPU processes and asks nnU-Net's trainer in each one.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from warmer.cli import main

from .conftest import CPU_TRAINER


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        mp.spawn(_nnunet_batch_of_rank, args=(world_size, _free_port(), env, shares), nprocs=world_size)
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
def test_warming_ddp_ranks_is_refused_with_a_fix(nnunet_env, capsys, tmp_path, command: str) -> None:
    assert main([command, "-d", "990", "-c", "2d", "-tr", CPU_TRAINER, "--num-gpus", "2", "--cache-dir",
                 str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "list --num-gpus 2" in err
    assert not (tmp_path / "cache").exists()
