"""A custom trainer a user might write, found through nnUNet_extTrainer: the warmer must replay what it changes.

It overrides `_build_loss` (plain SoftDiceLoss weighted 2:1 over CE, another smoothing), `configure_optimizers`
(AdamW) and switches deep supervision off (one network output, one loss call per step). A short CPU-compiling
run, like the shipped `nnUNetTrainerCPUCompile_2it`.
"""

import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import SoftDiceLoss
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from warmer.demo.trainers.nnUNetTrainerCPUCompile import nnUNetTrainerCPUCompile_2it


class nnUNetTrainerTestCustom(nnUNetTrainerCPUCompile_2it):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False

    def _build_loss(self):
        loss = DC_and_CE_loss({"batch_dice": self.configuration_manager.batch_dice, "smooth": 1e-3, "do_bg": False,
                               "ddp": self.is_ddp}, {}, weight_ce=1, weight_dice=2,
                              ignore_label=self.label_manager.ignore_label, dice_class=SoftDiceLoss)
        if self._do_i_compile():
            loss.dc = torch.compile(loss.dc)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=1e-3, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, 1e-3, self.num_epochs)
