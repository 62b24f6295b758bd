"""Stage 2: replay the compiled calls of one nnU-Net training run, in a fresh process, on synthetic tensors.

Run as `python -m warmer.pipeline.replay SPEC.json RESULT.json` (a `ReplaySpec` in, a `ReplayResult` out).
The trainer is built with nnU-Net's own `get_trainer_from_args` and `initialize()`; batches come from the
trainer's own validation transforms (deep-supervision downsampling, regions, cascade channels), so dtypes and
shapes are the ones its data loader produces. The sequence follows `run_training` + `perform_actual_validation`:
  1. `train_step` (train mode, grad, the trainer's autocast and GradScaler, optimizer step)
  2. `validation_step` under `torch.no_grad()` after `on_validation_epoch_start` (eval)
  3. deep supervision off, eval, the sliding-window predictor on one patch-sized image (inference_mode,
     mirroring), exactly as the final validation calls it.
  4. what a process that never trained compiles (`nnUNetv2_predict` with nnUNet_compile=1, `nnUNetv2_train
     --val`): dynamo's in-memory state is reset (the disk cache is not), the trainer's checkpoint is saved to a
     scratch model folder and nnU-Net's predictor loads it with `initialize_from_trained_model_folder`, builds
     its own network (deep supervision off from construction), compiles it and predicts. For nnU-Net's own
     trainers this is the final validation's graph again (a re-trace, no compile); it is replayed so that a
     trainer or version whose predictor network differs is warmed too.
While it replays, the process records its closure: every file under the cache that it opens, imports as an extension
module, loads with ctypes, compiles as Python, or checks for existence (`os.stat`: torch checks some kernels, such as
the CPU ISA probe's, only by their presence, and rebuilds them when they are gone). On a hit that is exactly what a
training job needs from the cache; the manifest lists it.
A DDP rank (world size > 1) joins its process group first, as `nnUNetv2_train -num_gpus N` does (NCCL on
cuda:rank; gloo on CPU, for trainers that allow CPU DDP), and replays 1-3 in step with the other ranks; its
dice loss all-gathers across ranks. Step 4 is left to the single-GPU target: prediction never runs DDP.
Progress lines go to stderr with PROGRESS_PREFIX; everything nnU-Net prints goes wherever stdout goes.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmer.values.capability import CannotCompile, diagnose, gpu_too_old
from warmer.values.results import ReplayResult, ReplaySpec
from warmer.values.targets import Target

PROGRESS_PREFIX = "@@nnunet-warmer "
_RECORDED_EVENTS = {"open": 0, "import": 1, "ctypes.dlopen": 0, "compile": 1}  # event -> index of its path argument


def progress(message: str) -> None:
    print(PROGRESS_PREFIX + message, file=sys.stderr, flush=True)


def _set_threads_like_nnunet(device_type: str) -> None:
    """`nnUNetv2_train` sets these before building the trainer; inductor's CPU code depends on them."""
    import torch

    if device_type == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    elif device_type == "cuda":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)


def _join_process_group(target: Target) -> None:
    """`run_training.run_ddp`'s order: init the group (MASTER_ADDR/PORT from the parent), then pick the GPU."""
    import torch
    import torch.distributed as dist

    device = torch.device(target.device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=target.rank,
                            world_size=target.world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)


def _synthetic_batch(trainer: Any) -> dict[str, Any]:
    """A batch as nnU-Net's data loader yields it, made by the trainer's own validation transforms."""
    import torch

    cm, lm = trainer.configuration_manager, trainer.label_manager
    patch = tuple(int(p) for p in cm.patch_size)
    transforms = trainer.get_validation_transforms(
        trainer._get_deep_supervision_scales(),
        is_cascaded=trainer.is_cascaded,
        foreground_labels=lm.foreground_labels,
        regions=lm.foreground_regions if lm.has_regions else None,
        ignore_label=lm.ignore_label,
    )
    raw_channels = trainer.num_input_channels - (len(lm.foreground_labels) if trainer.is_cascaded else 0)
    labels = [int(v) for v in lm.all_labels] + ([int(lm.ignore_label)] if lm.has_ignore_label else [])
    label_values = torch.tensor(labels, dtype=torch.int16)
    seg_channels = 2 if trainer.is_cascaded else 1
    samples = []
    for sample in range(trainer.batch_size):
        generator = torch.Generator().manual_seed(sample)
        image = torch.randn((raw_channels, *patch), generator=generator, dtype=torch.float32)
        index = torch.randint(0, len(labels), (seg_channels, math.prod(patch)), generator=generator)
        seg = label_values[index].reshape(seg_channels, *patch)
        samples.append(transforms(image=image, segmentation=seg))
    data = torch.stack([s["image"] for s in samples]).float()
    first = samples[0]["segmentation"]
    if isinstance(first, list):
        target: Any = [torch.stack([s["segmentation"][i] for s in samples]) for i in range(len(first))]
    else:
        target = torch.stack([s["segmentation"] for s in samples])
    return {"data": data, "target": target, "keys": [f"synthetic_{i}" for i in range(len(samples))]}


def _point_at_data_or_placeholder(trainer: Any, scratch: Path) -> None:
    """`initialize()` infers the dataset class from file endings only; warming must not need the data."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    try:
        infer_dataset_class(trainer.preprocessed_dataset_folder)
    except (AssertionError, FileNotFoundError, OSError):
        placeholder = scratch / "placeholder_data"
        placeholder.mkdir(parents=True, exist_ok=True)
        (placeholder / "case.b2nd").touch()
        trainer.preprocessed_dataset_folder = str(placeholder)


def _final_validation_image(trainer: Any) -> Any:
    """A preprocessed case as the final validation loads it: numpy float32 -> torch, (C, [1,] *patch)."""
    import numpy as np
    import torch

    patch = [int(p) for p in trainer.configuration_manager.patch_size]
    shape = (trainer.num_input_channels, *([1] if len(patch) == 2 else []), *patch)
    return torch.from_numpy(np.zeros(shape, dtype=np.float32))


class _ClosureRecorder:
    """Records the files under the cache dir that this process touches, through Python's audit hooks (open,
    extension-module import, ctypes.dlopen, compile) and a wrapper around `os.stat` that only observes.

    Audit hooks cannot be removed, so a process records from `start` to its end; files the dynamic linker or a
    compiler child opens are not seen (on a hit torch starts no compiler, and extension modules are seen)."""

    def __init__(self, inductor: Path) -> None:
        self.inductor = str(inductor.resolve())
        self.seen: set[str] = set()

    def _note(self, path: object) -> None:
        if isinstance(path, (str, bytes, os.PathLike)):
            try:
                text = os.fsdecode(path)
            except TypeError:
                return
            if text.startswith(self.inductor):
                self.seen.add(text)

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        index = _RECORDED_EVENTS.get(event)
        if index is not None and len(args) > index:
            self._note(args[index])

    def start(self) -> None:
        sys.addaudithook(self._audit)
        real_stat = os.stat

        def observed_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            self._note(path)
            return real_stat(path, *args, **kwargs)

        os.stat = observed_stat  # type: ignore[assignment]

    def closure(self, cache_root: Path) -> tuple[str, ...]:
        """The regular files seen, relative to the cache dir (torch's lock files and temp files left out)."""
        locks = os.path.join(self.inductor, "locks") + os.sep
        files = {os.path.relpath(p, cache_root.resolve()) for p in self.seen
                 if not p.startswith(locks) and not p.endswith((".lock", ".tmp")) and os.path.isfile(p)}
        return tuple(sorted(files))


def _timed(phase: str, device: Any, fn: Callable[[], None]) -> float:
    import torch

    progress(f"{phase} ...")
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    progress(f"{phase} done in {seconds:.1f} s")
    return seconds


def _predictor(device: Any) -> Any:
    """nnU-Net's predictor as the final validation and `nnUNetv2_predict` configure it."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    return nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                           perform_everything_on_device=True, device=device, verbose=False,
                           verbose_preprocessing=False, allow_tqdm=False)


def _build_trainer(target: Target, scratch: Path) -> Any:
    """nnU-Net's trainer for `target`, as `nnUNetv2_train` builds it (after joining the DDP group)."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    if target.world_size > 1:
        progress(f"joining the process group as rank {target.rank} of {target.world_size}")
        _join_process_group(target)
    progress("building trainer")
    trainer = get_trainer_from_args(target.dataset_name, target.configuration, 0, target.trainer,
                                    target.plans_identifier, device=torch.device(target.device))
    if torch.device(target.device) != trainer.device:
        raise RuntimeError(f"{target.trainer} put rank {target.rank} on {trainer.device}, not {target.device} "
                           f"(nnU-Net runs DDP on CUDA only): warm with --device cuda")
    return trainer


@dataclass
class _TrainingRun:
    """An initialized trainer and a synthetic batch; each method is one phase of a training run, replayed."""

    trainer: Any
    batch: dict[str, Any]
    scratch: Path
    compile_seconds_before_reset: float = 0.0

    def train_step(self) -> None:
        self.trainer.on_train_epoch_start()
        self.trainer.train_step(self.batch)

    def validation_step(self) -> None:
        import torch

        with torch.no_grad():
            self.trainer.on_validation_epoch_start()
            self.trainer.validation_step(self.batch)

    def final_validation(self) -> None:
        trainer = self.trainer
        trainer.set_deep_supervision_enabled(False)
        trainer.network.eval()
        predictor = _predictor(trainer.device)
        predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager,
                                        None, trainer.dataset_json, trainer.__class__.__name__,
                                        trainer.inference_allowed_mirroring_axes)
        predictor.predict_sliding_window_return_logits(_final_validation_image(trainer))
        trainer.set_deep_supervision_enabled(True)

    def fresh_inference(self) -> None:
        import torch

        from warmer.values import counters

        # reset() clears dynamo's compile timers (not the hit/miss counters): keep what was spent so far
        self.compile_seconds_before_reset = counters.snapshot().compile_seconds
        torch._dynamo.reset()
        trainer, model = self.trainer, self.scratch / "model"
        (model / "fold_0").mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(str(model / "fold_0" / "checkpoint_final.pth"))
        (model / "plans.json").write_text(json.dumps(trainer.plans_manager.plans))
        (model / "dataset.json").write_text(json.dumps(trainer.dataset_json))
        predictor = _predictor(trainer.device)
        previous = os.environ.get("nnUNet_compile")
        os.environ["nnUNet_compile"] = "1"
        try:
            predictor.initialize_from_trained_model_folder(str(model), use_folds=(0,))
        finally:
            if previous is None:
                del os.environ["nnUNet_compile"]
            else:
                os.environ["nnUNet_compile"] = previous
        predictor.predict_sliding_window_return_logits(_final_validation_image(trainer))


class NodeCannotCompileError(RuntimeError):
    """Found before compiling: this node cannot (a GPU too old for Triton)."""

    def __init__(self, finding: CannotCompile) -> None:
        super().__init__(finding.line())
        self.finding = finding


def replay(spec: ReplaySpec, scratch: Path) -> ReplayResult:
    target = spec.target
    inductor = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    recorder = _ClosureRecorder(inductor)
    recorder.start()
    _set_threads_like_nnunet(target.device.split(":")[0])
    import torch
    import torch._dynamo.config as dynamo_config

    from warmer.values import counters
    from warmer.values.fingerprint import target_fingerprint
    from warmer.values.plans import load_plans
    from warmer.values.profiles import JobEnvironment

    counters.count_symbolic_shapes()
    wall_start = time.perf_counter()
    environment = JobEnvironment(os.environ)  # this process was started with the job environment
    if dynamo_config.automatic_dynamic_shapes != environment.automatic_dynamic_shapes:
        raise RuntimeError(f"torch's automatic_dynamic_shapes is {dynamo_config.automatic_dynamic_shapes}, but the "
                           f"environment selects {environment.automatic_dynamic_shapes}: report this torch version")
    fingerprint = target_fingerprint(load_plans(target.dataset_name, target.plans_identifier), target, environment)
    trainer = _build_trainer(target, scratch)
    compiles = bool(trainer._do_i_compile())
    if not compiles and not spec.allow_eager:
        return ReplayResult(compiles=False, fingerprint=fingerprint)
    if compiles and trainer.device.type == "cuda":
        too_old = gpu_too_old(torch.cuda.get_device_properties(trainer.device))
        if too_old is not None:
            raise NodeCannotCompileError(too_old)
    if torch.cuda.is_available():
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
    _point_at_data_or_placeholder(trainer, scratch)
    trainer.initialize()
    if trainer.batch_size != target.batch_per_rank:
        raise RuntimeError(f"trainer batch {trainer.batch_size} != target batch {target.batch_per_rank}")
    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    trainer.set_deep_supervision_enabled(trainer.enable_deep_supervision)
    run = _TrainingRun(trainer, _synthetic_batch(trainer), scratch)
    device = trainer.device

    times = {"train_step": _timed("train_step", device, run.train_step),
             "validation_step": _timed("validation_step", device, run.validation_step)}
    # benchmarks only: more train steps, in training's order (before the final validation and the reset)
    steady = [_timed(f"steady train_step {i + 1}", device, run.train_step) for i in range(spec.steady_steps)]
    times["final_validation"] = _timed("final_validation", device, run.final_validation)
    if target.world_size > 1:
        torch.distributed.destroy_process_group()
    else:
        times["fresh_inference"] = _timed("fresh_inference", device, run.fresh_inference)
    totals = counters.snapshot()
    totals = counters.Counters(**{**totals.to_dict(), "compile_seconds": round(
        totals.compile_seconds + run.compile_seconds_before_reset, 3)})
    return ReplayResult(
        compiles=compiles, fingerprint=fingerprint, phases={k: round(v, 3) for k, v in times.items()},
        counters=totals, wall_seconds=round(time.perf_counter() - wall_start, 3),
        steady_train_step=round(sorted(steady)[len(steady) // 2], 4) if steady else None,
        closure=recorder.closure(inductor.parent))


def main(argv: list[str]) -> int:
    spec_path, result_path = Path(argv[0]), Path(argv[1])
    spec = ReplaySpec.from_dict(json.loads(spec_path.read_text()))
    try:
        with tempfile.TemporaryDirectory(prefix="nnunet-warmer-replay-") as scratch:
            result = replay(spec, Path(scratch)).to_dict()
        code = 0
    except Exception as e:  # reported to the parent, which prints it with the log
        result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        found = e.finding if isinstance(e, NodeCannotCompileError) else diagnose(e)
        if found is not None:
            result["cannot_compile"] = found.to_dict()
        code = 1
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, result_path)
    return code


if __name__ == "__main__":
    exit_code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # The result and every cache entry are on disk by now (torch writes its caches when it compiles, not at
    # exit); interpreter teardown (compile workers, loader threads) would add about 1.5 s to every replay.
    os._exit(exit_code)
