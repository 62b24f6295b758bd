"""`nnunet-warmer env`: the shell exports that point a training job at the cache."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from warmer.cache.staging import default_scratch
from warmer.cli.options import add_cache_option, add_shapes_option, emit_json, job_cache, job_environment, stderr
from warmer.demo import CPU_TRAINERS_DIR
from warmer.errors import UserError
from warmer.run.runner import job_exports, stage_targets
from warmer.values.plans import resolve_dataset_name
from warmer.values.targets import TargetKey


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("env", help="shell exports that point a training job at the cache")
    add_cache_option(p)
    add_shapes_option(p)
    p.add_argument("--cpu-trainers", action="store_true",
                   help="also export nnUNet_extTrainer with the shipped CPU-compiling trainers")
    p.add_argument("--eager", action="store_true",
                   help="also export nnUNet_compile=f: jobs run without torch.compile (for a GPU type that cannot "
                        "compile, as `status` says)")
    p.add_argument("-d", metavar="DATASET",
                   help="the job's dataset: with -c, export a node-local copy of its targets' closures instead of "
                        "the shared cache (the job then needs only read access to it)")
    p.add_argument("-c", nargs="+", metavar="CONFIG", help="the job's configurations (with -d)")
    p.add_argument("-p", default="nnUNetPlans", metavar="PLANS", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-tr", default="nnUNetTrainer", metavar="TRAINER", help="trainer class (default nnUNetTrainer)")
    p.add_argument("--scratch", metavar="DIR",
                   help="node-local folder for that copy (default: $SLURM_TMPDIR, then $TMPDIR, then /tmp)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if bool(args.d) != bool(args.c):
        raise UserError("-d and -c go together: name the job's dataset and configurations, or neither")
    keys = [TargetKey(resolve_dataset_name(args.d), args.p, configuration, args.tr) for configuration in args.c
            ] if args.d else None
    cache, closures = job_cache(args, keys)
    if not cache.root.is_dir():  # still exit 0: the job runs, only it compiles everything itself
        stderr(f"nnunet-warmer: warning: cache dir {cache.root} does not exist, so this job compiles cold: check "
               f"--cache-dir, or warm it first")
    if closures is not None:
        scratch = Path(args.scratch) if args.scratch else default_scratch(dict(os.environ))
        cache = stage_targets(cache, closures, scratch, stderr).local
    trainer_folders = [CPU_TRAINERS_DIR] if args.cpu_trainers else []
    variables = job_exports(cache, args.shapes, trainer_folders, job_environment(args), args.eager)
    if args.json:
        emit_json(variables)
    else:
        print("".join(f"export {k}={shlex.quote(v)}\n" for k, v in variables.items()), end="")
    return 0
