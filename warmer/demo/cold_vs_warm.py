"""The built-in default job: synthetic dataset -> real plan & preprocess -> warm -> real training, cold vs warm.

Each configuration is trained three times with the real `nnUNetv2_train` (1 epoch of 2 iterations, final
validation included), side by side in this run: on an empty cache, on the warmed one, and eager (nnU-Net's
`nnUNet_compile=f`, the floor a warm cache can approach).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from warmer.cache.layout import CacheDir
from warmer.demo.synthetic import DEFAULT_DATASET_ID, NnunetPaths, entry_point, use_demo_dataset
from warmer.run.runner import run_and_record
from warmer.values.capability import EAGER_VALUE, EAGER_VARIABLE

DEMO_TRAINER = "nnUNetTrainerCPUCompile_2it"


def _say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def train_command(dataset_id: int, configuration: str, device: str) -> list[str]:
    return [entry_point("nnUNetv2_train"), str(dataset_id), configuration, "0", "-tr", DEMO_TRAINER,
            "-device", device.split(":")[0]]


def run_demo(workdir: Path, configurations: list[str], as_json: bool) -> int:
    import torch

    from warmer.pipeline.warm import warm_target
    from warmer.values.plans import load_plans
    from warmer.values.profiles import JobEnvironment
    from warmer.values.targets import build_targets

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    workdir = workdir.absolute()
    paths = NnunetPaths(workdir)
    logs = workdir / "logs"
    use_demo_dataset(paths, configurations, _say, logs)
    environment = JobEnvironment.with_profile("default")
    eager = JobEnvironment({**environment.variables, EAGER_VARIABLE: EAGER_VALUE})
    dp = load_plans(str(DEFAULT_DATASET_ID))
    cache, cold_cache = CacheDir(workdir / "cache"), CacheDir(workdir / "cold-cache")
    rows: list[dict[str, Any]] = []
    for target in build_targets(dp, configurations, DEMO_TRAINER, [device]):
        _say(f"{target.configuration}: warming the cache at {cache.root}")
        outcome = warm_target(dp, target, cache, lambda m, c=target.configuration: _say(f"{c}: {m}"), environment)
        _say(f"{target.configuration}: {outcome.message}")
        shutil.rmtree(cold_cache.root, ignore_errors=True)
        runs = {}
        for label, use, job_environment in (("cold", cold_cache, environment), ("warm", cache, environment),
                                            ("eager", cold_cache, eager)):
            shutil.rmtree(paths.results, ignore_errors=True)
            log_path = logs / f"nnUNetv2_train-{target.configuration}-{label}.log"
            log_path.parent.mkdir(exist_ok=True)
            where = "eager (nnUNet_compile=f)" if label == "eager" else f"on the {label} cache"
            _say(f"{target.configuration}: real nnUNetv2_train {where} (log: {log_path}) ...")
            with open(log_path, "w") as log:
                summary = run_and_record(train_command(DEFAULT_DATASET_ID, target.configuration, device),
                                         use, job_environment, report=_say, output=log)
            if summary.exit_code != 0:
                _say(f"{target.configuration}: nnUNetv2_train failed with exit code {summary.exit_code}, "
                     f"see {log_path}")
                return 1
            runs[label] = summary
        cold, warm = runs["cold"], runs["warm"]
        rows.append({"configuration": target.configuration, "batch": target.batch_per_rank, "device": device,
                     "cold_wall_s": cold.wall_seconds, "warm_wall_s": warm.wall_seconds,
                     "eager_wall_s": runs["eager"].wall_seconds,
                     "cold_compile_s": cold.counters.compile_seconds,
                     "warm_compile_s": warm.counters.compile_seconds,
                     "warm_fx_miss": warm.counters.fx_miss, "warm_aot_miss": warm.counters.aot_miss,
                     "warm_fx_hit": warm.counters.fx_hit})
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'configuration':14} {'cold wall':>10} {'warm wall':>10} {'eager wall':>11} {'cold/warm':>10} "
              f"{'warm/eager':>11} {'cold compile':>13} {'warm compile':>13} {'warm FX hit/miss':>17}")
        for r in rows:
            print(f"{r['configuration']:14} {r['cold_wall_s']:9.1f}s {r['warm_wall_s']:9.1f}s "
                  f"{r['eager_wall_s']:10.1f}s {r['cold_wall_s'] / r['warm_wall_s']:9.1f}x "
                  f"{r['warm_wall_s'] / r['eager_wall_s']:10.2f}x {r['cold_compile_s']:12.1f}s "
                  f"{r['warm_compile_s']:12.1f}s {r['warm_fx_hit']:>8}/{r['warm_fx_miss']}")
    return 0
