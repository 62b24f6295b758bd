"""`nnunet-warmer env`: the shell exports that point a training job at the cache."""

from __future__ import annotations

import argparse
import shlex

from warmer.cli.options import add_cache_option, add_shapes_option, emit_json, job_environment, stderr, trusted_cache
from warmer.demo import CPU_TRAINERS_DIR
from warmer.run.runner import job_exports


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("env", help="shell exports that point a training job at the cache")
    add_cache_option(p)
    add_shapes_option(p)
    p.add_argument("--cpu-trainers", action="store_true",
                   help="also export nnUNet_extTrainer with the shipped CPU-compiling trainers")
    p.add_argument("--eager", action="store_true",
                   help="also export nnUNet_compile=f: jobs run without torch.compile (for a GPU type that cannot "
                        "compile, as `status` says)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cache = trusted_cache(args)
    if not cache.root.is_dir():  # still exit 0: the job runs, only it compiles everything itself
        stderr(f"nnunet-warmer: warning: cache dir {cache.root} does not exist, so this job compiles cold: check "
               f"--cache-dir, or warm it first")
    trainer_folders = [CPU_TRAINERS_DIR] if args.cpu_trainers else []
    variables = job_exports(cache, args.shapes, trainer_folders, job_environment(args), args.eager)
    if args.json:
        emit_json(variables)
    else:
        print("".join(f"export {k}={shlex.quote(v)}\n" for k, v in variables.items()), end="")
    return 0
