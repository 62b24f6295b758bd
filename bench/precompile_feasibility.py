"""Can nnU-Net's compiled calls be precompiled with torch's AOT path, and loaded without dynamo's re-trace? (issue 28)

For one configuration of the demo dataset, with nnU-Net's own trainer (the CPU trainer, built and initialized as the
warmer's replay does it) and a batch made by its own transforms, each call nnU-Net compiles is tried:
  network train   - the network in train mode with deep supervision, forward and backward (the train step)
  dice loss       - the loss's dice term (nnU-Net compiles `loss.dc`)
  network no_grad - eval mode under torch.no_grad (the validation step)
  network inference_mode - eval mode under torch.inference_mode, one tile of the patch size (sliding window)
In a first process each is `torch.compile(fn, fullgraph=True).aot_compile(...)`d and saved with
`save_compiled_function`. A fresh process loads each with `torch.compiler.load_compiled_function`, calls it on the
same inputs, and compares it with the `torch.compile` path of that process (same weights): maximum absolute
difference of outputs (and of parameter gradients for the train call) over 3 steps, frames dynamo traced while
the loaded functions ran, and the seconds of load and first call against the torch.compile path's first call and
eager's. That process runs twice, and the second one is reported: its torch.compile path finds the cache the first
one filled, so it is a warm start. Prints a markdown table; paste it with the date and machine into bench/RESULTS.md.

    python bench/precompile_feasibility.py [-c 2d]

nnUNet_preprocessed must hold the demo dataset's plans (`nnunet-warmer demo` or the tests' work folders) and
nnUNet_extTrainer the CPU trainers (warmer/demo/trainers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TRAINER = "nnUNetTrainerCPUCompile"
CALLS = ("network train", "dice loss", "network no_grad", "network inference_mode")
STEPS = 3


def _trainer(configuration: str, scratch: Path) -> Any:
    import torch

    from warmer.pipeline.replay import _build_trainer, _point_at_data_or_placeholder
    from warmer.values.plans import load_plans
    from warmer.values.targets import build_targets

    (target,) = build_targets(load_plans("990"), [configuration], TRAINER, ["cpu"])
    trainer = _build_trainer(target, scratch)
    _point_at_data_or_placeholder(trainer, scratch)
    torch.manual_seed(0)
    trainer.initialize()
    trainer.set_deep_supervision_enabled(True)
    return trainer


def _calls(trainer: Any) -> dict[str, tuple[Callable[..., Any], tuple[Any, ...], Callable[[], Any]]]:
    """Each compiled call of nnU-Net: the plain function, its example arguments, and the context it runs in. Modules
    are arguments: torch cannot save a module a function closes over ("Failed to serialize the following objects:
    [MemoryEfficientSoftDiceLoss()] Please mark these as external data"), and a job's modules are its own."""
    import contextlib

    import torch

    from warmer.pipeline.replay import _synthetic_batch

    network = getattr(trainer.network, "_orig_mod", trainer.network)
    dc = getattr(trainer.loss.loss.dc, "_orig_mod", trainer.loss.loss.dc)
    batch = _synthetic_batch(trainer)
    data, target = batch["data"], batch["target"]
    with torch.no_grad():
        logits = network(data)[0].detach()

    def network_forward(net: torch.nn.Module, x: torch.Tensor) -> Any:
        return net(x)

    def dice(loss: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss(x, y)

    return {
        "network train": (network_forward, (network, data), contextlib.nullcontext),
        "dice loss": (dice, (dc, logits.requires_grad_(True), target[0]), contextlib.nullcontext),
        "network no_grad": (network_forward, (network, data), torch.no_grad),
        "network inference_mode": (network_forward, (network, data[:1]), torch.inference_mode),
    }


def _mode(trainer: Any, call: str) -> None:
    network = getattr(trainer.network, "_orig_mod", trainer.network)
    network.train(call == "network train")
    trainer.set_deep_supervision_enabled(call == "network train")


def save(configuration: str, folder: Path) -> dict[str, Any]:
    """Precompile and save each call; what happened to each."""
    import torch

    trainer = _trainer(configuration, folder / "scratch-save")
    outcome: dict[str, Any] = {}
    for call, (fn, args, context) in _calls(trainer).items():
        _mode(trainer, call)
        start = time.perf_counter()
        try:
            with context():
                compiled = torch.compile(fn, fullgraph=True).aot_compile((args, {}))
            compiled.save_compiled_function(str(folder / f"{call}.bin"))
            outcome[call] = {"ok": True, "seconds": time.perf_counter() - start,
                             "bytes": (folder / f"{call}.bin").stat().st_size}
        except Exception as e:  # the finding: what torch says
            outcome[call] = {"ok": False, "seconds": time.perf_counter() - start,
                             "error": f"{type(e).__name__}: {' '.join(str(e).split())[:400]}",
                             "where": traceback.format_exc().strip().splitlines()[-3:]}
    return outcome


def _max_difference(a: Any, b: Any) -> float:
    import torch

    if isinstance(a, (list, tuple)):
        return max(_max_difference(x, y) for x, y in zip(a, b, strict=True))
    return float((a.detach().float() - b.detach().float()).abs().max()) if isinstance(a, torch.Tensor) else 0.0


def load(configuration: str, folder: Path, saved: dict[str, Any]) -> dict[str, Any]:
    """Load each saved call in this fresh process and compare it with torch.compile's path and eager."""
    import torch
    import torch._dynamo.utils

    trainer = _trainer(configuration, folder / "scratch-load")
    network = getattr(trainer.network, "_orig_mod", trainer.network)
    outcome: dict[str, Any] = {}
    for call, (fn, args, context) in _calls(trainer).items():
        if not saved[call]["ok"]:
            continue
        _mode(trainer, call)
        row: dict[str, Any] = {}
        try:
            frames_before = torch._dynamo.utils.counters["frames"]["total"]
            start = time.perf_counter()
            with open(folder / f"{call}.bin", "rb") as f:
                loaded = torch.compiler.load_compiled_function(f)
            row["load_seconds"] = time.perf_counter() - start
            paths = {"loaded": loaded, "torch.compile": torch.compile(fn), "eager": fn}
            results: dict[str, list[Any]] = {}
            for name, path in paths.items():
                results[name] = []
                for step in range(STEPS):
                    network.zero_grad(set_to_none=True)
                    start = time.perf_counter()
                    with context():
                        out = path(*args)
                    if call == "network train":
                        sum(o.float().mean() for o in out).backward()
                        out = [*out, *(p.grad for p in network.parameters() if p.grad is not None)]
                    if step == 0:
                        row[f"{name} first call"] = time.perf_counter() - start
                    results[name].append(out)
                if name == "loaded":
                    row["frames traced while loaded ran"] = torch._dynamo.utils.counters["frames"]["total"] - \
                        frames_before
            row["max |loaded - torch.compile|"] = max(
                _max_difference(a, b) for a, b in zip(results["loaded"], results["torch.compile"], strict=True))
            row["max |loaded - eager|"] = max(
                _max_difference(a, b) for a, b in zip(results["loaded"], results["eager"], strict=True))
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
            row["where"] = traceback.format_exc().strip().splitlines()[-3:]
        outcome[call] = row
    return outcome


def _child(phase: str, configuration: str, folder: Path) -> dict[str, Any]:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor")}
    result = subprocess.run([sys.executable, __file__, "--phase", phase, "-c", configuration, "--folder", str(folder)],
                            env=env, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{phase}: exit {result.returncode}\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", default="2d", metavar="CONFIG")
    parser.add_argument("--phase", choices=("save", "load"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "save":
        print(json.dumps(save(args.c, args.folder)))
        return 0
    if args.phase == "load":
        saved = json.loads((args.folder / "saved.json").read_text())
        print(json.dumps(load(args.c, args.folder, saved)))
        return 0
    with tempfile.TemporaryDirectory(prefix="precompile-") as tmp:
        folder = Path(tmp)
        saved = _child("save", args.c, folder)
        (folder / "saved.json").write_text(json.dumps(saved))
        # twice: the second process finds the cache the first one's torch.compile path filled, so its
        # torch.compile column is a warm start, what a precompiled start must beat
        loaded = {}
        if any(s["ok"] for s in saved.values()):
            _child("load", args.c, folder)
            loaded = _child("load", args.c, folder)
    import torch

    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"on CPU; Dataset990 {args.c}, {TRAINER}; {STEPS} steps each\n")
    print("| call | aot_compile + save | load | first call: loaded / torch.compile (warm cache) / eager | frames "
          "traced on load | max abs diff vs torch.compile / eager |")
    print("|---|---|---|---|---|---|")
    for call in CALLS:
        s, row = saved[call], loaded.get(call, {})
        made = f"{s['seconds']:.1f} s, {s['bytes'] / 1e6:.1f} MB" if s["ok"] else f"failed: {s['error']}"
        if "error" in row:
            print(f"| {call} | {made} | failed: {row['error']} | | | |")
        elif row:
            print(f"| {call} | {made} | {row['load_seconds']:.2f} s | {row['loaded first call']:.2f} / "
                  f"{row['torch.compile first call']:.2f} / {row['eager first call']:.2f} s | "
                  f"{row['frames traced while loaded ran']} | {row['max |loaded - torch.compile|']:.2e} / "
                  f"{row['max |loaded - eager|']:.2e} |")
        else:
            print(f"| {call} | {made} | | | | |")
    print("\n" + json.dumps({"saved": saved, "loaded": loaded}, indent=1), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
