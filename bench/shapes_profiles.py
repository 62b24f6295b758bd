"""The two shapes profiles side by side in one run: compile time, warm start and steady-state step time.

For each configuration of the demo dataset and each profile (`default`: plain nnU-Net, automatic dynamic
shapes; `static`: fixed-shape graphs only), fresh processes replay nnU-Net's own train step, validation step,
final validation and a fresh-process prediction (see warmer/pipeline/replay.py):
  cold - into an empty cache of its own: the compile a first training job pays
  warm - on the cache the cold process just filled, followed by more train steps whose median is the
         steady-state step time (what every later iteration of training costs)
Prints a markdown table; paste it with the date and machine into bench/RESULTS.md.

    python bench/shapes_profiles.py [--workdir DIR] [-c 2d 3d_fullres] [--steps 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from warmer.cache.layout import CacheDir
from warmer.demo.synthetic import DEFAULT_DATASET_ID, NnunetPaths, use_demo_dataset
from warmer.pipeline.warm import run_replay
from warmer.values.plans import load_plans
from warmer.values.profiles import PROFILES, JobEnvironment
from warmer.values.targets import build_targets

TRAINER = "nnUNetTrainerCPUCompile"


def measure(workdir: Path, configurations: list[str], steps: int) -> list[dict]:
    use_demo_dataset(NnunetPaths(workdir), configurations, lambda m: print(m, file=sys.stderr), workdir / "logs")
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    dp = load_plans(str(DEFAULT_DATASET_ID))
    rows = []
    for target in build_targets(dp, configurations, TRAINER, [device]):
        for profile in PROFILES:
            cache = CacheDir(workdir / f"profile-cache-{target.configuration}-{profile}")
            shutil.rmtree(cache.root, ignore_errors=True)
            environment = JobEnvironment.with_profile(profile)
            say = lambda m, p=profile: print(f"  {p}: {m}", file=sys.stderr)  # noqa: E731
            cold = run_replay(target, cache, "cold", say, environment)
            warm = run_replay(target, cache, "warm", say, environment, steady_steps=steps)
            rows.append({
                "configuration": target.configuration, "batch": target.batch_per_rank, "device": device,
                "profile": profile, "cold_total": round(cold.seconds, 3),
                "warm_total": round(warm.seconds, 3), "steady_train_step": warm.steady_train_step,
                "graphs_compiled": cold.counters.fx_miss, "symbols": cold.counters.symbols,
                "warm_counters": warm.counters.to_dict(), "cold": cold.phases, "warm": warm.phases,
            })
    return rows


def table(rows: list[dict], steps: int) -> str:
    lines = ["| configuration | batch | profile | cold (compile) | warm start | steady train step "
             f"(median of {steps}) | graphs compiled | symbolic shapes | warm FX hit/miss |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["warm_counters"]
        lines.append(f"| {r['configuration']} | {r['batch']} | {r['profile']} | {r['cold_total']:.2f} s | "
                     f"{r['warm_total']:.2f} s | {r['steady_train_step'] * 1000:.1f} ms | {r['graphs_compiled']} | "
                     f"{r['symbols']} | {c['fx_hit']}/{c['fx_miss']} |")
    lines += ["", "| configuration | static / default: cold | warm start | steady train step |", "|---|---|---|---|"]
    by_key = {(r["configuration"], r["profile"]): r for r in rows}
    for configuration in dict.fromkeys(r["configuration"] for r in rows):
        d, s = by_key[(configuration, "default")], by_key[(configuration, "static")]
        lines.append(f"| {configuration} | {s['cold_total'] / d['cold_total']:.2f}x | "
                     f"{s['warm_total'] / d['warm_total']:.2f}x | "
                     f"{s['steady_train_step'] / d['steady_train_step']:.2f}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("-c", nargs="+", default=["2d", "3d_fullres"])
    parser.add_argument("--steps", type=int, default=10, help="timed train steps after the warm start")
    parser.add_argument("--json", type=Path, help="also write the raw rows as JSON")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nnunet-warmer-bench-"))
    started = time.strftime("%Y-%m-%d %H:%M")
    rows = measure(workdir.absolute(), args.c, args.steps)
    print(f"{started}, {platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, device {rows[0]['device']}\n")
    print(table(rows, args.steps))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
