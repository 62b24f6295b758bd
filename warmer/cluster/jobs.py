"""The jobs of one `submit`: per GPU type and configuration a warm job and the training array that waits for it
alone, as batch scripts (a configuration's folds never wait for another configuration's compile).

The scripts are plain shell a user can read and resubmit: they call the Python install that ran `submit` by
absolute path, export the nnU-Net variables `submit` saw, and hold every sbatch option as an `#SBATCH` line except
the dependency on the warm job, whose ID exists only once that job is queued.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from warmer.errors import UserError
from warmer.pipeline.status import CANNOT_COMPILE_EXIT

DEFAULT_GPU_TYPE_ARG = "--constraint={type}"
GPU_REQUEST_PREFIXES = ("--gres", "--gpus", "-G", "--gpus-per-node", "--gpus-per-task")
# The nnUNetv2_train flags that `submit` sets itself: passing them after `--` would train another target than
# the one warmed.
OWN_TRAIN_FLAGS = {"-tr": "-tr", "-p": "-p", "-device": "--device", "-num_gpus": "(one GPU per fold only)"}


@dataclass(frozen=True)
class JobRequest:
    """What to run: the warm and training targets, where the cache and logs live, and how to ask SLURM for nodes.

    `log_dir` holds this submission's scripts and logs; `submit.prepare` turns the user's --jobs-dir into a new
    folder under it. `gpu_types` (None: no constraint) each get their own warm jobs and training arrays."""

    dataset_name: str
    configurations: tuple[str, ...]
    plans_identifier: str
    trainer: str
    device: str
    folds: tuple[int, ...]
    cache_dir: Path
    log_dir: Path
    gpu_types: tuple[str | None, ...] = (None,)
    gpu_type_arg: str = DEFAULT_GPU_TYPE_ARG
    sbatch_args: tuple[str, ...] = ()
    shapes: str = "default"
    allow_untrusted_cache: bool = False
    train_args: tuple[str, ...] = ()
    eager_if_cannot_compile: bool = False

    @property
    def cache_args(self) -> list[str]:
        """The cache flags every job passes on, to `status`, `warm` and `run` alike."""
        return ["--cache-dir", str(self.cache_dir), "--shapes", self.shapes,
                *(["--allow-untrusted-cache"] if self.allow_untrusted_cache else [])]

    def node_options(self, gpu_type: str | None) -> list[str]:
        """The sbatch options of every job of one GPU type: the type, a GPU when training on CUDA (unless the
        user's options ask for GPUs themselves), then the user's options. Warm and training jobs of a type get
        the same ones, so they land on the same kind of node."""
        typed = [self.gpu_type_arg.replace("{type}", gpu_type)] if gpu_type else []
        asks_for_gpus = any(o.startswith(GPU_REQUEST_PREFIXES) for o in (*typed, *self.sbatch_args))
        gpu = ["--gres=gpu:1"] if self.device == "cuda" and not asks_for_gpus else []
        return [*typed, *gpu, *self.sbatch_args]


@dataclass(frozen=True)
class SlurmJob:
    """One batch script to queue: a warm job, or a training array with one task per fold."""

    kind: Literal["warm", "train"]
    gpu_type: str | None
    configurations: tuple[str, ...]
    folds: tuple[int, ...]
    script: Path
    text: str
    log: str

    def log_of(self, job_id: str, fold: str = "<fold>") -> str:
        """Where SLURM writes the log of job `job_id` (of one fold's task, for a training array)."""
        return self.log.replace("%j", job_id).replace("%A", job_id).replace("%a", fold)

    def logs(self, job_id: str) -> list[str]:
        """Every log file of job `job_id`: one, or one per fold."""
        return [self.log_of(job_id, str(fold)) for fold in self.folds] or [self.log_of(job_id)]

    def describe(self) -> str:
        where = f" on {self.gpu_type}" if self.gpu_type else ""
        if self.kind == "warm":
            return f"warm job{where} ({' '.join(self.configurations)})"
        return f"training of {self.configurations[0]}{where} (folds {' '.join(map(str, self.folds))})"

    def to_dict(self, job_id: str | None, warm_job_id: str | None) -> dict[str, Any]:
        return {"id": job_id, "kind": self.kind, "gpu_type": self.gpu_type,
                "configurations": list(self.configurations), "folds": list(self.folds), "script": str(self.script),
                "logs": self.logs(job_id) if job_id else [self.log], "depends_on": warm_job_id}


def check_job_options(request: JobRequest) -> None:
    """One-line errors for what sbatch or nnUNetv2_train would only reject later, or accept wrongly."""
    for option in (*request.sbatch_args, request.gpu_type_arg):
        if "\n" in option or not option.startswith("-"):
            raise UserError(f"--sbatch-arg {option!r}: pass one sbatch option per flag, as "
                            f"--sbatch-arg=--partition=gpu")
    if "{type}" not in request.gpu_type_arg:
        raise UserError(f"--gpu-type-arg {request.gpu_type_arg!r} has no {{type}}: write it as "
                        f"--gpu-type-arg=--gres=gpu:{{type}}:1")
    for flag in request.train_args:
        name = flag.split("=")[0]
        if name in OWN_TRAIN_FLAGS:
            raise UserError(f"{flag} after --: submit sets it for every job; pass {OWN_TRAIN_FLAGS[name]} to "
                            f"submit instead")
    if not request.folds or any(f < 0 for f in request.folds) or len(set(request.folds)) != len(request.folds):
        raise UserError(f"-f {' '.join(map(str, request.folds))}: pass distinct fold numbers, as -f 0 1 2 3 4")


def programs() -> tuple[list[str], str]:
    """The warmer and nnUNetv2_train of this Python install, by absolute path."""
    bin_dir = Path(sys.executable).parent
    warmer = [str(bin_dir / "nnunet-warmer")] if (bin_dir / "nnunet-warmer").exists() \
        else [sys.executable, "-m", "warmer"]
    train = bin_dir / "nnUNetv2_train"
    if not train.exists():
        found = shutil.which("nnUNetv2_train")
        if found is None:
            raise UserError("nnUNetv2_train is not installed beside this Python or on PATH: install nnunetv2 in "
                            "the environment that runs nnunet-warmer")
        train = Path(found)
    return warmer, str(train)


def _quote(args: list[str] | tuple[str, ...]) -> str:
    return " ".join(shlex.quote(a) for a in args)


def _exports() -> str:
    names = sorted(n for n in os.environ if n.startswith("nnUNet_"))
    return "".join(f"export {n}={shlex.quote(os.environ[n])}\n" for n in names)


def _header(name: str, log: str, options: list[str], comment: str, array: str | None = None) -> str:
    lines = ["#!/bin/bash", *(f"# {line}" for line in comment.splitlines()), f"#SBATCH --job-name={name}"]
    if array:
        lines.append(f"#SBATCH --array={array}")
    lines.append(f"#SBATCH --output={log}")
    lines += [f"#SBATCH {option}" for option in options]
    return "\n".join(lines) + "\n"


def _stem(kind: str, gpu_type: str | None, configuration: str | None = None) -> str:
    return "-".join(part for part in (kind, gpu_type, configuration) if part)


def warm_script(request: JobRequest, gpu_type: str | None, configuration: str, warmer: list[str]) -> tuple[str, str]:
    """The warm job of one configuration on one GPU type: `status` first, which ends the job in seconds when its
    target is warm; otherwise `warm`. Its exit code decides whether SLURM starts or cancels that configuration's
    training array."""
    log = str(request.log_dir / f"{_stem('warm', gpu_type, configuration)}-%j.log")
    where = f" on GPU type {gpu_type}" if gpu_type else ""
    comment = (f"nnunet-warmer submit: warm the cache for {request.dataset_name} {configuration}{where}.\n"
               f"Ends at once when status finds its target warm; otherwise warm compiles and verifies it.\n"
               f"A non-zero exit makes SLURM cancel the training array of {configuration} that depends on this "
               f"one.")
    targets = ["-d", request.dataset_name, "-c", configuration, "-p", request.plans_identifier,
               "-tr", request.trainer, "--device", request.device, *request.cache_args]
    if request.eager_if_cannot_compile:  # a node type that cannot compile trains eager: the warm job succeeds
        warm = (f"{_quote(warmer)} warm \"${{targets[@]}}\"; code=$?\n"
                f"       if [ $code -eq 2 ]; then\n"
                f"           {_quote(warmer)} status \"${{targets[@]}}\" > /dev/null\n"
                f"           if [ $? -eq {CANNOT_COMPILE_EXIT} ]; then\n"
                f"               echo \"nnunet-warmer: this node type cannot compile (above); its training runs eager "
                f"(--eager-if-cannot-compile)\"; exit 0\n"
                f"           fi\n"
                f"       fi\n"
                f"       exit $code ;;")
    else:
        warm = f"exec {_quote(warmer)} warm \"${{targets[@]}}\" ;;"
    body = (f"set -uo pipefail\n{_exports()}"
            f"targets=({_quote(targets)})\n"
            f"{_quote(warmer)} status \"${{targets[@]}}\"\n"
            f"case $? in\n"
            f"    0) echo \"nnunet-warmer: every target is warm; nothing to compile\"; exit 0 ;;\n"
            f"    1|{CANNOT_COMPILE_EXIT}) {warm}  # {CANNOT_COMPILE_EXIT}: cannot compile, found earlier: try again\n"
            f"    *) exit 2 ;;  # status named the problem above\n"
            f"esac\n")
    name = f"{_stem('warm', gpu_type, configuration)}-{request.dataset_name}"
    return _header(name, log, request.node_options(gpu_type), comment) + body, log


def train_script(request: JobRequest, gpu_type: str | None, configuration: str, warmer: list[str],
                 train: str) -> tuple[str, str]:
    """The training array of one configuration on one GPU type: one task per fold, fold = array index, each
    `nnUNetv2_train` run under `nnunet-warmer run` (its summary line in the log, its JSON beside it)."""
    stem = _stem("train", gpu_type, configuration)
    log = str(request.log_dir / f"{stem}-%A_%a.log")
    where = f" on GPU type {gpu_type}" if gpu_type else ""
    comment = (f"nnunet-warmer submit: train {request.dataset_name} {configuration}{where}, one array task per "
               f"fold.\nQueued with --dependency=afterok:<warm job> --kill-on-invalid-dep=yes: it starts only "
               f"after that\njob succeeded, and SLURM cancels it if that job fails.")
    summary = f"{request.log_dir}/{stem}-${{SLURM_ARRAY_JOB_ID}}_${{fold}}.json"
    run = [*warmer, "run", *request.cache_args,
           *(["--eager-if-cannot-compile"] if request.eager_if_cannot_compile else [])]
    command = [train, request.dataset_name, configuration]
    options = ["-tr", request.trainer, "-p", request.plans_identifier, "-device", request.device,
               *request.train_args]
    body = (f"set -euo pipefail\n{_exports()}"
            f"fold=$SLURM_ARRAY_TASK_ID\n"
            f"exec {_quote(run)} --json \"{summary}\" -- \\\n"
            f"    {_quote(command)} \"$fold\" {_quote(options)}\n")
    name = f"{stem}-{request.dataset_name}"
    array = ",".join(map(str, request.folds))
    return _header(name, log, request.node_options(gpu_type), comment, array) + body, log


def plan_jobs(request: JobRequest) -> list[SlurmJob]:
    """Per GPU type and configuration: its warm job, then the training array that depends on it."""
    warmer, train = programs()
    jobs = []
    for gpu_type in request.gpu_types:
        for configuration in request.configurations:
            text, log = warm_script(request, gpu_type, configuration, warmer)
            script = request.log_dir / f"{_stem('warm', gpu_type, configuration)}.sh"
            jobs.append(SlurmJob("warm", gpu_type, (configuration,), (), script, text, log))
            text, log = train_script(request, gpu_type, configuration, warmer, train)
            script = request.log_dir / f"{_stem('train', gpu_type, configuration)}.sh"
            jobs.append(SlurmJob("train", gpu_type, (configuration,), request.folds, script, text, log))
    return jobs
