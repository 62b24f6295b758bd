"""First-iteration times of nnU-Net training, cold vs warm vs eager, measured side by side in one run.

For each configuration of the demo dataset, three fresh processes replay the first train step, the first
validation step, the final validation and a fresh-process prediction (nnU-Net's own trainer and predictor,
see warmer/pipeline/replay.py):
  cold  - torch.compile into an empty cache
  warm  - torch.compile on the cache the cold process just filled
  eager - nnUNet_compile=f, no compile at all
Prints a markdown table; paste it with the date and machine into bench/RESULTS.md.

    python bench/warm_start.py [--workdir DIR] [-c 2d 3d_fullres] [--json FILE]
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
from warmer.values.profiles import JobEnvironment
from warmer.values.targets import build_targets

TRAINER = "nnUNetTrainerCPUCompile"


def measure(workdir: Path, configurations: list[str]) -> list[dict]:
    use_demo_dataset(NnunetPaths(workdir), configurations, lambda m: print(m, file=sys.stderr), workdir / "logs")
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    dp = load_plans(str(DEFAULT_DATASET_ID))
    rows = []
    for target in build_targets(dp, configurations, TRAINER, [device]):
        cache = CacheDir(workdir / f"bench-cache-{target.configuration}")
        shutil.rmtree(cache.root, ignore_errors=True)
        runs = {}
        for mode in ("cold", "warm", "eager"):
            extra = {"nnUNet_compile": "f"} if mode == "eager" else {}
            environment = JobEnvironment.with_profile("default", {**os.environ, **extra})
            runs[mode] = run_replay(target, cache, mode, lambda m: print(f"  {m}", file=sys.stderr), environment,
                                    allow_eager=mode == "eager")
        row = {"configuration": target.configuration, "batch": target.batch_per_rank, "device": device}
        for mode, result in runs.items():
            row[mode] = result.phases
            row[f"{mode}_total"] = round(result.seconds, 3)
            row[f"{mode}_counters"] = result.counters.to_dict()
        row["cold_over_warm"] = round(row["cold_total"] / row["warm_total"], 1)
        row["warm_over_eager"] = round(row["warm_total"] / row["eager_total"], 2)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| configuration | batch | mode | first train step | first val step | final validation | "
             "fresh-process predict | total | FX hit/miss |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for mode in ("cold", "warm", "eager"):
            p, c = r[mode], r[f"{mode}_counters"]
            lines.append(f"| {r['configuration']} | {r['batch']} | {mode} | {p['train_step']:.2f} s | "
                         f"{p['validation_step']:.2f} s | {p['final_validation']:.2f} s | "
                         f"{p['fresh_inference']:.2f} s | "
                         f"{r[f'{mode}_total']:.2f} s | {c['fx_hit']}/{c['fx_miss']} |")
    lines.append("")
    lines.append("| configuration | cold / warm | warm / eager |")
    lines.append("|---|---|---|")
    for r in rows:
        lines.append(f"| {r['configuration']} | {r['cold_over_warm']}x | {r['warm_over_eager']}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("-c", nargs="+", default=["2d", "3d_fullres"])
    parser.add_argument("--json", type=Path, help="also write the raw rows as JSON")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nnunet-warmer-bench-"))
    started = time.strftime("%Y-%m-%d %H:%M")
    rows = measure(workdir.absolute(), args.c)
    print(f"{started}, {platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, device {rows[0]['device']}\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
