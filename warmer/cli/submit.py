"""`nnunet-warmer submit`: queue on SLURM, per GPU type, a warm job and the training arrays that wait for it."""

from __future__ import annotations

import argparse
from pathlib import Path

from warmer.cli.options import add_cache_option, add_dataset_options, add_shapes_option, emit_json, stderr
from warmer.cluster.jobs import DEFAULT_GPU_TYPE_ARG


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="queue on SLURM a warm job per GPU type and configuration, and the training "
                                      "arrays that wait for it",
                       description="Queue, per GPU type and configuration, one warm job on a node of that type and "
                                   "one training array (a task per fold) that starts only when that warm job "
                                   "succeeded and is cancelled by SLURM when it fails; no configuration waits for "
                                   "another's warm.")
    add_dataset_options(p)
    p.add_argument("-f", nargs="+", type=int, required=True, metavar="FOLD", help="folds to train, as -f 0 1 2 3 4")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="what the jobs train on (default cuda: each job asks for --gres=gpu:1 unless your sbatch "
                        "options ask for GPUs)")
    add_cache_option(p)
    add_shapes_option(p)
    p.add_argument("--gpu-type", nargs="+", metavar="TYPE",
                   help="GPU types to warm and train on, one warm job per configuration each (default: one, no "
                        "constraint)")
    p.add_argument("--gpu-type-arg", default=DEFAULT_GPU_TYPE_ARG, metavar="OPTION",
                   help=f"the sbatch option that picks a GPU type (default {DEFAULT_GPU_TYPE_ARG}; sites that type "
                        f"GPUs through gres: --gpu-type-arg=--gres=gpu:{{type}}:1)")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="OPTION",
                   help="an sbatch option for every job, as --sbatch-arg=--partition=gpu (repeatable)")
    p.add_argument("--jobs-dir", default="nnunet-warmer-jobs", metavar="DIR",
                   help="where each submission gets a folder for its scripts and logs, on storage the nodes see "
                        "(default ./nnunet-warmer-jobs)")
    p.add_argument("--eager-if-cannot-compile", action="store_true",
                   help="a GPU type whose warm finds it cannot compile (no C compiler, a GPU too old for Triton, "
                        "Triton missing) trains eager (nnUNet_compile=f) instead of having its training cancelled")
    p.add_argument("--dry-run", action="store_true", help="print the job scripts; queue nothing")
    p.add_argument("--json", action="store_true", help="print one object per job as JSON")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- more nnUNetv2_train arguments (e.g. --npz)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from warmer.cluster.jobs import JobRequest
    from warmer.cluster.submit import submit_chain

    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    request = JobRequest(args.d, tuple(args.c or ()), args.p, args.tr, args.device, tuple(args.f),
                         Path(args.cache_dir).absolute(), Path(args.jobs_dir), tuple(args.gpu_type or (None,)),
                         args.gpu_type_arg, tuple(args.sbatch_arg), args.shapes, args.allow_untrusted_cache,
                         tuple(train_args), args.eager_if_cannot_compile)
    request, jobs = submit_chain(request, args.dry_run, report=stderr)
    if args.json:
        emit_json({"jobs_dir": str(request.log_dir), "dry_run": args.dry_run, "jobs": [j.to_dict() for j in jobs]})
        return 0
    if args.dry_run:
        for submitted in jobs:
            print(f"# ---- {submitted.job.script} ----\n{submitted.job.text}")
        stderr(f"dry run: {len(jobs)} job(s), nothing queued and nothing written")
        return 0
    print(f"scripts and logs: {request.log_dir}")
    if request.eager_if_cannot_compile:
        print("a GPU type whose warm finds it cannot compile trains eager (nnUNet_compile=f); its warm log says so")
    for submitted in jobs:
        job = submitted.job
        after = f", after job {submitted.warm_job_id}" if submitted.warm_job_id else ""
        print(f"job {submitted.job_id}: {job.describe()}{after}; log {job.log_of(submitted.job_id or '')}")
    return 0
