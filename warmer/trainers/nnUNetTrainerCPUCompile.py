"""Trainers that let nnU-Net compile on CPU, for tests, the demo and benchmarks on machines without a GPU.

nnU-Net's `_do_i_compile()` refuses CPU; these keep every other rule (`nnUNet_compile`, MPS, Windows).
Found by nnU-Net through `nnUNet_extTrainer` pointing at this folder (`nnunet-warmer env --cpu-trainers`).
"""

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerCPUCompile(nnUNetTrainer):
    """nnUNetTrainer that also compiles on CPU (inductor's C++ backend)."""

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
