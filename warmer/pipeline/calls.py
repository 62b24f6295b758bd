"""What one training run compiles, derived from the plans alone (no network is built), cheap enough for a dry run.

`tests/test_plans.py` checks the listing against the shapes nnU-Net's own network produces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from warmer.values.plans import DatasetPlans
from warmer.values.profiles import Profile
from warmer.values.targets import Target


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: str

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(s) for s in self.shape)}]"


@dataclass(frozen=True)
class CompiledCall:
    """One call of a compiled function during a training run, with the exact argument shapes."""

    phase: str
    function: str
    mode: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    calls_per_step: int = 1
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "function": self.function,
            "mode": self.mode,
            "inputs": [{"shape": list(t.shape), "dtype": t.dtype} for t in self.inputs],
            "outputs": [{"shape": list(t.shape), "dtype": t.dtype} for t in self.outputs],
            "calls_per_step": self.calls_per_step,
            "note": self.note,
        }


def variant_paths(dp: DatasetPlans, target: Target) -> list[str]:
    """The nnU-Net code paths this target takes that differ from a plain single-GPU softmax U-Net."""
    cm, lm = dp.configuration(target.configuration), dp.label_manager()
    paths = [f"network {cm.network_arch_class_name.rsplit('.', 1)[-1]}"]
    if lm.has_regions:
        paths.append(f"regions: {len(lm.foreground_regions)} sigmoid outputs, BCE + dice on bool targets")
    if lm.has_ignore_label:
        paths.append(f"ignore label {lm.ignore_label}: masked dice and CE")
    if cm.previous_stage_name:
        paths.append(f"cascade: +{len(lm.foreground_labels)} one-hot channels from {cm.previous_stage_name} "
                     f"predictions")
    if target.world_size > 1:
        paths.append(f"DDP rank {target.rank} of {target.world_size}: batch {target.batch_per_rank}, dice "
                     f"{'gathered across ranks' if cm.batch_dice else 'per rank'}")
    return paths


def deep_supervision_scales(strides: list[list[int]]) -> list[tuple[float, ...]]:
    """Same formula as `nnUNetTrainer._get_deep_supervision_scales`: 1 / cumprod(strides), all but the last."""
    scales = []
    cumulative = [1] * len(strides[0])
    for stride in strides:
        cumulative = [c * s for c, s in zip(cumulative, stride, strict=True)]
        scales.append(tuple(1 / c for c in cumulative))
    return scales[:-1]


def plan_calls(dp: DatasetPlans, target: Target, profile: Profile) -> list[CompiledCall]:
    """Every compiled call of one training run (train step, validation step, final validation), and of a process
    that only predicts, under a shapes profile."""
    cm = dp.configuration(target.configuration)
    lm = dp.label_manager()
    patch = [int(p) for p in cm.patch_size]
    strides = [[int(s) for s in st] for st in cm.pool_op_kernel_sizes]
    if len(strides[0]) != len(patch):
        strides = [st[-len(patch):] for st in strides]
    channels = dp.num_input_channels(target.configuration)
    heads = lm.num_segmentation_heads
    batch = target.batch_per_rank
    on_cuda = target.device.startswith("cuda")
    out_dtype = "float16" if on_cuda else "float32"
    if lm.has_regions:
        target_channels, target_dtype = len(lm.foreground_regions), "bool"
    else:
        target_channels, target_dtype = 1, "int16"

    scales = deep_supervision_scales(strides)
    static = profile == "static"

    def shape_note(scale: int) -> str:
        if static:
            return " (static)"
        return " (first: static)" if scale == 0 else " (dynamic shapes)"

    scale_shapes = [tuple(round(p * s) for p, s in zip(patch, sc, strict=True)) for sc in scales]
    image = TensorSpec((batch, channels, *patch), "float32")
    outputs = tuple(TensorSpec((batch, heads, *shape), out_dtype) for shape in scale_shapes)
    loss_scales = range(len(scales) - 1)  # the lowest scale has weight 0 and is skipped
    amp = ", autocast fp16" if on_cuda else ""

    calls: list[CompiledCall] = []
    for phase, mode in (("train_step", "train, grad" + amp), ("validation_step", "eval, no_grad" + amp)):
        calls.append(CompiledCall(phase, "network", mode, (image,), outputs, 1, "deep supervision on"))
        for i in loss_scales:
            inputs = [outputs[i], TensorSpec((batch, target_channels, *scale_shapes[i]), target_dtype)]
            if lm.has_ignore_label:
                inputs.append(TensorSpec((batch, 1, *scale_shapes[i]), "bool"))
            note = f"deep-supervision scale {i}" + shape_note(i)
            calls.append(CompiledCall(phase, "dice_loss", mode, tuple(inputs), (TensorSpec((), out_dtype),),
                                      1, note))
    mirror_combinations = 2 ** len(patch)
    tile = TensorSpec((1, channels, *patch), "float32")
    tile_output = (TensorSpec((1, heads, *patch), out_dtype),)
    calls.append(CompiledCall(
        "final_validation", "network", "eval, inference_mode" + amp, (tile,), tile_output, mirror_combinations,
        "deep supervision off; sliding-window tiles with mirroring",
    ))
    calls.append(CompiledCall(
        "fresh_inference", "network", "eval, inference_mode" + amp, (tile,), tile_output, mirror_combinations,
        "a process that never trained: nnUNetv2_predict (nnUNet_compile=1), nnUNetv2_train --val",
    ))
    return calls
