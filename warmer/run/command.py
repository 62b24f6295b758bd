"""Which target a wrapped nnU-Net command trains or predicts, read off its arguments as nnU-Net parses them."""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass

from warmer.errors import UserError
from warmer.values.plans import resolve_dataset_name
from warmer.values.targets import TargetKey


@dataclass(frozen=True)
class NnunetCommand:
    """The target of an `nnUNetv2_train` / `nnUNetv2_predict` command: its key, and the device it runs on."""

    key: TargetKey
    device: str

    def ledger_fields(self) -> dict[str, str]:
        key = self.key
        return {"dataset": key.dataset_name, "configuration": key.configuration, "trainer": key.trainer,
                "plans": key.plans_identifier, "device": self.device}


def parse_nnunet_command(command: list[str]) -> NnunetCommand | None:
    """The target of an nnU-Net train or predict command; None for any other command."""
    program = command[0].rsplit("/", 1)[-1] if command else ""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-tr", default="nnUNetTrainer")
    parser.add_argument("-p", default="nnUNetPlans")
    parser.add_argument("-device", default="cuda")
    if program == "nnUNetv2_train":
        parser.add_argument("dataset")
        parser.add_argument("configuration")
    elif program == "nnUNetv2_predict":
        parser.add_argument("-d", dest="dataset")
        parser.add_argument("-c", dest="configuration")
    else:
        return None
    known, _ = parser.parse_known_args(command[1:])
    dataset = str(known.dataset)
    with contextlib.suppress(UserError):
        dataset = resolve_dataset_name(dataset)
    return NnunetCommand(TargetKey(dataset, known.p, str(known.configuration), known.tr),
                         "cuda:0" if known.device == "cuda" else known.device)
