"""Trainers that let nnU-Net compile on CPU, for tests, the demo and benchmarks on machines without a GPU.

nnU-Net's `_do_i_compile()` refuses CPU; these keep every other rule (`nnUNet_compile`, MPS, Windows).
They also let a DDP process group (gloo) train on CPU, which nnU-Net ties to CUDA in two places: its
`__init__` moves a DDP rank to cuda:rank, and `initialize()` passes `device_ids` to DDP. A DDP rank stays
on CPU when it was asked for the CPU or when there is no CUDA (nnU-Net's DDP launcher always asks for
cuda). Everything else, the all-gathering dice loss included, is nnU-Net's DDP code.
Found by nnU-Net through `nnUNet_extTrainer` pointing at this folder (`nnunet-warmer env --cpu-trainers`).
"""

import os
from unittest import mock

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch.nn.parallel import DistributedDataParallel


def _cpu_ddp(module: torch.nn.Module, device_ids: list[int] | None = None) -> DistributedDataParallel:
    return DistributedDataParallel(module)


class nnUNetTrainerCPUCompile(nnUNetTrainer):
    """nnUNetTrainer that also compiles on CPU (inductor's C++ backend) and runs DDP on CPU (gloo)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp and (device.type == "cpu" or not torch.cuda.is_available()):
            self.device, self.grad_scaler = torch.device("cpu"), None

    def initialize(self) -> None:
        if self.is_ddp and self.device.type == "cpu":
            with mock.patch(f"{nnUNetTrainer.__module__}.DDP", _cpu_ddp):
                super().initialize()
        else:
            super().initialize()

    def _do_i_compile(self) -> bool:
        if self.device.type == "cpu" and os.name != "nt":
            return os.environ.get("nnUNet_compile", "true").lower() in ("true", "1", "t")
        return super()._do_i_compile()


class nnUNetTrainerCPUCompile_2it(nnUNetTrainerCPUCompile):
    """One epoch of 2 training and 2 validation iterations: a real but short `nnUNetv2_train`."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 2
