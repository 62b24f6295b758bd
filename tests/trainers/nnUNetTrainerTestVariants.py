"""Custom trainers a user might write, found through nnUNet_extTrainer: the warmer must replay what they change.

All are short CPU-compiling runs (the shipped `nnUNetTrainerCPUCompile_2it`).
"""

import numpy as np
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import SoftDiceLoss
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from warmer.trainers.nnUNetTrainerCPUCompile import nnUNetTrainerCPUCompile_2it


class nnUNetTrainerTestLossAdam(nnUNetTrainerCPUCompile_2it):
    """Own loss (plain SoftDiceLoss weighted 2:1 over CE, another smoothing) and AdamW."""

    def _build_loss(self):
        loss = DC_and_CE_loss({"batch_dice": self.configuration_manager.batch_dice, "smooth": 1e-3, "do_bg": False,
                               "ddp": self.is_ddp}, {}, weight_ce=1, weight_dice=2,
                              ignore_label=self.label_manager.ignore_label, dice_class=SoftDiceLoss)
        if self._do_i_compile():
            loss.dc = torch.compile(loss.dc)
        scales = self._get_deep_supervision_scales()
        weights = np.array([1 / (2**i) for i in range(len(scales))])
        weights[-1] = 0
        return DeepSupervisionWrapper(loss, weights / weights.sum())

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=1e-3, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, 1e-3, self.num_epochs)


class nnUNetTrainerTestNoDeepSupervision(nnUNetTrainerCPUCompile_2it):
    """Deep supervision switched off: one network output, one loss call per step."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
