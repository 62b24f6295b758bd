"""Shape enumeration (`list`) against nnU-Net's own network, old-format plans and `inherits_from`."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from warmer.cli import main
from warmer.pipeline.calls import plan_calls
from warmer.values.plans import load_plans
from warmer.values.targets import build_targets

from .helpers import CPU_TRAINER, write_old_format_plans


def _listed(capsys: pytest.CaptureFixture, *args: str) -> dict:
    assert main(["list", "--device", "cpu", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def _shapes(specs: list[dict]) -> list[tuple[int, ...]]:
    return [tuple(s["shape"]) for s in specs]


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_listed_shapes_match_nnunet_network(nnunet_env, capsys, configuration: str) -> None:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    listing = _listed(capsys, "-d", "990", "-c", configuration, "-tr", CPU_TRAINER)
    calls = listing["targets"][0]["calls"]
    train = next(c for c in calls if c["phase"] == "train_step" and c["function"] == "network")
    final = next(c for c in calls if c["phase"] == "final_validation")
    dice = [c for c in calls if c["phase"] == "train_step" and c["function"] == "dice_loss"]

    dp = load_plans("990")
    cm = dp.configuration(configuration)
    channels, heads = dp.num_input_channels(configuration), dp.label_manager().num_segmentation_heads
    if "plans_manager" in inspect.signature(nnUNetTrainer.build_network_architecture).parameters:
        network = nnUNetTrainer.build_network_architecture(dp.manager, cm, channels, heads, True)
    else:  # nnunetv2 < 2.7
        network = nnUNetTrainer.build_network_architecture(
            cm.network_arch_class_name, cm.network_arch_init_kwargs, cm.network_arch_init_kwargs_req_import,
            channels, heads, True)
    with torch.no_grad():
        outputs = network(torch.zeros(train["inputs"][0]["shape"]))
        assert _shapes(train["outputs"]) == [tuple(o.shape) for o in outputs]
        network.decoder.deep_supervision = False
        assert _shapes(final["outputs"]) == [tuple(network(torch.zeros(final["inputs"][0]["shape"])).shape)]
    # one dice call per deep-supervision output except the lowest (weight 0), same shape as that output
    assert len(dice) == len(outputs) - 1
    for call, output in zip(dice, outputs, strict=False):
        assert tuple(call["inputs"][0]["shape"]) == tuple(output.shape)
        assert tuple(call["inputs"][1]["shape"])[2:] == tuple(output.shape)[2:]
        assert call["inputs"][1]["dtype"] == "int16"
    assert final["calls_per_step"] == 2 ** len(cm.patch_size)


def test_old_format_plans_list_the_same_calls(nnunet_env, capsys) -> None:
    write_old_format_plans(nnunet_env)
    new = _listed(capsys, "-d", "990")
    old = _listed(capsys, "-d", "990", "-p", "nnUNetPlansOld")
    assert [t["calls"] for t in old["targets"]] == [t["calls"] for t in new["targets"]]


def test_inherits_from_resolves_parent_and_overrides(nnunet_env) -> None:
    dp = load_plans("990")
    plans = json.loads(dp.plans_file.read_text())
    plans["plans_name"] = "nnUNetPlansInherit"
    plans["configurations"]["3d_small_batch"] = {"inherits_from": "3d_fullres", "batch_size": 1}
    (dp.plans_file.parent / "nnUNetPlansInherit.json").write_text(json.dumps(plans))
    child_plans = load_plans("990", "nnUNetPlansInherit")
    parent, child = build_targets(child_plans, ["3d_fullres", "3d_small_batch"], CPU_TRAINER, ["cpu"])
    assert child.batch_per_rank == 1
    parent_calls, child_calls = plan_calls(child_plans, parent, "default"), plan_calls(child_plans, child, "default")
    assert [c.inputs[0].shape[1:] for c in child_calls] == [c.inputs[0].shape[1:] for c in parent_calls]
    assert child_calls[0].inputs[0].shape[0] == 1


def test_cuda_listing_shows_autocast_dtypes(nnunet_env) -> None:
    dp = load_plans("990")
    (target,) = build_targets(dp, ["3d_fullres"], CPU_TRAINER, ["cuda:0"])
    train_net = plan_calls(dp, target, "default")[0]
    assert "autocast" in train_net.mode and train_net.outputs[0].dtype == "float16"
