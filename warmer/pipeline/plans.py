"""Stage 1: read a dataset's plans through nnU-Net's own PlansManager and list what training compiles.

The listing is derived from the plans alone (no network is built), so it is cheap enough for a dry run;
`tests/test_plans.py` checks it against the shapes nnU-Net's own network produces.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from warmer.errors import UserError
from warmer.pipeline.profiles import active_profile


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
    def label(self) -> str:
        rank = f" rank {self.rank}/{self.world_size}" if self.world_size > 1 else ""
        return f"{self.dataset_name}/{self.plans_identifier}/{self.configuration}/{self.trainer}{rank}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Target:
        return cls(**data)


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


@dataclass
class DatasetPlans:
    """A dataset's plans file and dataset.json, opened through nnU-Net's PlansManager."""

    dataset_name: str
    plans_identifier: str
    plans_file: Path
    plans: dict[str, Any]
    dataset_json: dict[str, Any]
    manager: Any = field(repr=False)

    def configuration(self, name: str) -> Any:
        try:
            return self.manager.get_configuration(name)
        except KeyError as e:
            raise UserError(
                f"plans {self.plans_file} configuration '{name}' is missing key {e}: "
                f"re-run nnUNetv2_plan_and_preprocess -d {self.dataset_name}"
            ) from None

    def label_manager(self) -> Any:
        try:
            return self.manager.get_label_manager(self.dataset_json)
        except (KeyError, TypeError, AssertionError) as e:
            raise UserError(
                f"dataset.json of {self.dataset_name} has no usable 'labels' ({e}): fix dataset.json in "
                f"nnUNet_raw and re-run nnUNetv2_plan_and_preprocess"
            ) from None

    def num_input_channels(self, configuration: str) -> int:
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        if not (self.dataset_json.get("channel_names") or self.dataset_json.get("modality")):
            raise UserError(
                f"dataset.json of {self.dataset_name} has no 'channel_names': add them and re-run "
                f"nnUNetv2_plan_and_preprocess"
            )
        return determine_num_input_channels(self.manager, self.configuration(configuration), self.dataset_json)


def preprocessed_root() -> Path:
    value = os.environ.get("nnUNet_preprocessed")
    if not value:
        raise UserError("nnUNet_preprocessed is not set: export nnUNet_preprocessed=/path/to/nnUNet_preprocessed")
    return Path(value)


def resolve_dataset_name(dataset: str) -> str:
    """Accept `4`, `004` or `Dataset004_Hippocampus`, the way nnU-Net's `-d` does."""
    root = preprocessed_root()
    if dataset.startswith("Dataset"):
        name = dataset
    else:
        try:
            dataset_id = int(dataset)
        except ValueError:
            raise UserError(f"dataset '{dataset}' is neither an ID nor a DatasetXXX_Name: pass -d 4 or "
                            f"-d Dataset004_Name") from None
        prefix = f"Dataset{dataset_id:03d}_"
        found = sorted(p.name for p in root.glob(prefix + "*") if p.is_dir()) if root.is_dir() else []
        if len(found) != 1:
            what = "no" if not found else "more than one"
            raise UserError(f"{what} dataset with ID {dataset_id} in nnUNet_preprocessed={root}: run "
                            f"nnUNetv2_plan_and_preprocess -d {dataset_id} or fix nnUNet_preprocessed")
        name = found[0]
    if not (root / name).is_dir():
        raise UserError(f"dataset {name} not found in nnUNet_preprocessed={root}: run "
                        f"nnUNetv2_plan_and_preprocess for it or fix nnUNet_preprocessed")
    return name


def _read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist: {fix}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON ({e}): {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} is not a JSON object: {fix}")
    return data


def load_plans(dataset: str, plans_identifier: str = "nnUNetPlans") -> DatasetPlans:
    """Open plans and dataset.json the way `get_trainer_from_args` does, with user-facing errors."""
    name = resolve_dataset_name(dataset)
    folder = preprocessed_root() / name
    fix = f"run nnUNetv2_plan_and_preprocess -d {name} (or pass the right -p)"
    plans_file = folder / f"{plans_identifier}.json"
    plans = _read_json(plans_file, "plans file", fix)
    dataset_json = _read_json(folder / "dataset.json", "dataset.json", fix)
    if not isinstance(plans.get("configurations"), dict) or not plans["configurations"]:
        raise UserError(f"plans file {plans_file} has no 'configurations': {fix}")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        manager = PlansManager(plans)
    except (KeyError, TypeError) as e:
        raise UserError(f"plans file {plans_file} is missing key {e}: {fix}") from None
    return DatasetPlans(name, plans_identifier, plans_file, plans, dataset_json, manager)


def resolve_configurations(dp: DatasetPlans, requested: list[str] | None) -> list[str]:
    available = list(dp.plans["configurations"])
    if not requested:
        return available
    for name in requested:
        if name not in available:
            raise UserError(f"unknown configuration '{name}' in {dp.plans_file.name}: choose from "
                            f"{', '.join(available)}")
    return list(dict.fromkeys(requested))


@functools.cache
def find_trainer_class(trainer: str) -> type:
    """nnU-Net's own trainer lookup, without its chatter: its package, then `nnUNet_extTrainer` (nnunetv2 2.7 on;
    2.6 looks in its own package only).

    Cached: the lookup imports every trainer module, and each target's fingerprint asks for it again."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            found = _nnunet_trainer_lookup()(trainer)
    except (RuntimeError, AssertionError):
        found = None
    if found is None:
        raise UserError(f"unknown trainer '{trainer}': check -tr, or put its folder in nnUNet_extTrainer "
                        f"(nnunetv2 2.6: in nnunetv2/training/nnUNetTrainer)")
    return found


def _nnunet_trainer_lookup() -> Any:
    try:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        return recursive_find_trainer_class_by_name
    except ImportError:
        import nnunetv2
        from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

        folder = os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer")
        return lambda name: recursive_find_python_class(folder, name, "nnunetv2.training.nnUNetTrainer")


def trainer_source_hash(trainer_class: type) -> str:
    """Hash of the source of every trainer class outside nnunetv2 itself (its version covers the rest)."""
    digest = hashlib.sha256()
    for cls in trainer_class.__mro__:
        module = getattr(cls, "__module__", "") or ""
        if module.startswith(("nnunetv2.", "builtins")) or cls is object:
            continue
        try:
            digest.update(Path(inspect.getfile(cls)).read_bytes())
        except (TypeError, OSError):
            digest.update(module.encode() + b"." + cls.__qualname__.encode())
    return digest.hexdigest()[:16]


def plans_hash(dp: DatasetPlans, configuration: str) -> str:
    """Hash of what the graphs depend on: the resolved configuration plus labels and channels."""
    relevant = {
        "configuration": dp.configuration(configuration).configuration,
        "labels": dp.dataset_json.get("labels"),
        "regions_class_order": dp.dataset_json.get("regions_class_order"),
        "channels": dp.dataset_json.get("channel_names") or dp.dataset_json.get("modality"),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def plan_calls(dp: DatasetPlans, target: Target) -> list[CompiledCall]:
    """Every compiled call of one training run (train step, validation step, final validation), and of a process
    that only predicts."""
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
    static = active_profile() == "static"

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
