"""Targets: what one warm compiles for, a configuration trained by one trainer with one per-rank batch on one device."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from warmer.errors import UserError
from warmer.values.compat import check_versions
from warmer.values.plans import DatasetPlans, find_trainer_class, load_plans, resolve_configurations


@dataclass(frozen=True)
class TargetKey:
    """What names a target in the cache, whatever the device and batch: dataset, plans, configuration, trainer.

    A target's manifests and its locks live under the same sub-path, one file per environment fingerprint."""

    dataset_name: str
    plans_identifier: str
    configuration: str
    trainer: str

    @property
    def relative(self) -> Path:
        return Path(self.dataset_name, self.plans_identifier, self.configuration, self.trainer)


@dataclass(frozen=True)
class Target:
    """One thing to warm: a configuration trained by one trainer with one per-rank batch on one device.

    With DDP (`world_size` > 1) every rank is its own target: its batch share and its device are in the keys."""

    dataset_name: str
    plans_identifier: str
    configuration: str
    trainer: str
    device: str
    batch_per_rank: int
    rank: int = 0
    world_size: int = 1

    @property
    def key(self) -> TargetKey:
        return TargetKey(self.dataset_name, self.plans_identifier, self.configuration, self.trainer)

    @property
    def label(self) -> str:
        rank = f" rank {self.rank}/{self.world_size}" if self.world_size > 1 else ""
        return f"{self.dataset_name}/{self.plans_identifier}/{self.configuration}/{self.trainer}{rank}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Target:
        return cls(**data)


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was requested but torch sees no CUDA device here: run on a GPU node "
                            "or pass --device cpu")
        if requested not in ("cuda", "cuda:0"):
            raise UserError(f"--device {requested}: nnU-Net trains a single-GPU run on cuda:0: pass --device cuda "
                            f"and pick the GPU with CUDA_VISIBLE_DEVICES")
        return "cuda:0"
    if requested == "cpu":
        return "cpu"
    raise UserError(f"unknown --device '{requested}': use cuda or cpu")


def ddp_devices(num_gpus: int, requested: str, dry_run: bool) -> list[str]:
    """nnU-Net's DDP puts rank r on cuda:r; `--device cpu` gives a gloo group on CPU (for trainers that allow it,
    like the CPU test trainers). A dry run may list CUDA ranks on any machine."""
    if num_gpus < 1:
        raise UserError(f"--num-gpus {num_gpus}: pass 1 or more")
    if num_gpus == 1:
        return []
    if requested == "cpu":
        return ["cpu"] * num_gpus
    if not dry_run:
        import torch

        found = torch.cuda.device_count()
        if found < num_gpus:
            raise UserError(f"--num-gpus {num_gpus}: torch sees {found} CUDA devices here, and each rank compiles "
                            f"on its own GPU: warm on a node with {num_gpus} GPUs")
    return [f"cuda:{rank}" for rank in range(num_gpus)]


def ddp_batch_split(global_batch: int, world_size: int) -> list[int]:
    """Per-rank batch sizes, the formula of `nnUNetTrainer._set_batch_size_and_oversample` (tested against it)."""
    if global_batch < world_size:
        raise UserError(f"batch size {global_batch} is smaller than --num-gpus {world_size}: nnU-Net refuses to "
                        f"run DDP like this; use fewer GPUs")
    base = global_batch // world_size
    return [base + 1 if base * world_size + rank < global_batch else base for rank in range(world_size)]


def build_targets(dp: DatasetPlans, configurations: list[str], trainer: str, devices: list[str]) -> list[Target]:
    """One target per configuration, or per configuration and DDP rank when there is more than one device."""
    targets = []
    for name in configurations:
        batch = int(dp.configuration(name).batch_size)
        if len(devices) == 1:
            targets.append(Target(dp.dataset_name, dp.plans_identifier, name, trainer, devices[0], batch))
            continue
        for rank, share in enumerate(ddp_batch_split(batch, len(devices))):
            targets.append(Target(dp.dataset_name, dp.plans_identifier, name, trainer, devices[rank], share,
                                  rank, len(devices)))
    return targets


@dataclass(frozen=True)
class TargetRequest:
    """What a user asked to list, warm or check: nnU-Net's -d -c -p -tr, the device and the DDP world size."""

    dataset: str
    configurations: tuple[str, ...] = ()
    plans_identifier: str = "nnUNetPlans"
    trainer: str = "nnUNetTrainer"
    device: str = "auto"
    num_gpus: int = 1


def check_request(request: TargetRequest) -> tuple[DatasetPlans, list[str]]:
    """The plans and configurations of a request, with the versions, plans, configurations and trainer checked
    (one-line errors), but not the devices: `submit` checks on a login node what GPU nodes will run."""
    check_versions()
    dp = load_plans(request.dataset, request.plans_identifier)
    configurations = resolve_configurations(dp, list(request.configurations) or None)
    find_trainer_class(request.trainer)
    return dp, configurations


def select_targets(request: TargetRequest, dry_run: bool = False) -> tuple[DatasetPlans, list[Target]]:
    """The plans and the targets of a request, every part checked first (versions, plans, configurations,
    trainer, devices) with one-line errors. A dry run may list CUDA ranks on a machine without them."""
    dp, configurations = check_request(request)
    devices = ddp_devices(request.num_gpus, request.device, dry_run) or [resolve_device(request.device)]
    return dp, build_targets(dp, configurations, request.trainer, devices)
