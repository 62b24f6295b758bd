"""`submit`: write the job scripts into a new folder and queue them, all or nothing.

Each warm job goes in before the training array that depends on it: the one of its GPU type and configuration.
If sbatch refuses a job after others went in, those are cancelled, so a rejected option never leaves half a chain
queued.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from warmer.cache.layout import CacheDir
from warmer.cache.trust import require_trusted
from warmer.cluster.jobs import JobRequest, SlurmJob, check_job_options, plan_jobs
from warmer.cluster.slurm import SbatchError, require_sbatch, sbatch, scancel
from warmer.errors import UserError
from warmer.report import Reporter
from warmer.values.targets import TargetRequest, check_request


@dataclass(frozen=True)
class SubmittedJob:
    """A job of the chain with the ID SLURM gave it and the ID of the warm job it waits for (None: dry run)."""

    job: SlurmJob
    job_id: str | None = None
    warm_job_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.job.to_dict(self.job_id, self.warm_job_id)


def new_jobs_folder(base: Path, dataset_name: str) -> Path:
    """A folder of its own for one submission's scripts and logs, named after the dataset and the time."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = base.absolute() / f"{dataset_name}-{stamp}"
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = base.absolute() / f"{dataset_name}-{stamp}-{suffix}"
    return folder


def _write_scripts(jobs: list[SlurmJob], folder: Path) -> None:
    try:
        folder.mkdir(parents=True)
        for job in jobs:
            job.script.write_text(job.text)
            job.script.chmod(0o755)
    except OSError as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise UserError(f"cannot write the job scripts to {folder}: {e.strerror}: pass --jobs-dir with a folder "
                        f"you can write on storage the nodes see") from None


def _roll_back(queued: list[str], folder: Path) -> str:
    """Cancel what went in; say what is left queued, if anything."""
    if not queued:
        shutil.rmtree(folder, ignore_errors=True)
        return "nothing was queued"
    problem = scancel(queued)
    if problem is None:
        shutil.rmtree(folder, ignore_errors=True)
        return f"cancelled the {len(queued)} job(s) already queued ({' '.join(queued)}); nothing is queued"
    return (f"could not cancel the jobs already queued ({problem}): cancel them with: scancel {' '.join(queued)} "
            f"(scripts in {folder})")


def submit_jobs(jobs: list[SlurmJob], folder: Path, report: Reporter) -> list[SubmittedJob]:
    """Write every script into `folder`, then queue the jobs in order: each training array with
    `--dependency=afterok:<the warm job of its GPU type and configuration> --kill-on-invalid-dep=yes`, so a failed
    warm cancels that array and no other."""
    _write_scripts(jobs, folder)
    submitted: list[SubmittedJob] = []
    warm_ids: dict[tuple[str | None, tuple[str, ...]], str] = {}
    job = jobs[0]
    try:
        for job in jobs:
            warm_id = warm_ids.get((job.gpu_type, job.configurations)) if job.kind == "train" else None
            options = [f"--dependency=afterok:{warm_id}", "--kill-on-invalid-dep=yes"] if warm_id else []
            job_id = sbatch(job.script, options)
            if job.kind == "warm":
                warm_ids[job.gpu_type, job.configurations] = job_id
            submitted.append(SubmittedJob(job, job_id, warm_id))
    except SbatchError as e:
        left = _roll_back([s.job_id for s in submitted if s.job_id], folder)
        raise UserError(f"sbatch refused the {job.describe()}: {e}; {left}: fix that option and submit "
                        f"again") from None
    except BaseException:
        report(f"stopped while queueing: {_roll_back([s.job_id for s in submitted if s.job_id], folder)}")
        raise
    return submitted


def prepare(request: JobRequest, dry_run: bool) -> JobRequest:
    """Check everything a job would trip over before anything is queued (options, sbatch, versions, plans,
    configurations, trainer, the cache's owner), and name this submission's own folder under `log_dir`."""
    check_job_options(request)
    if not dry_run:
        require_sbatch()
    dp, configurations = check_request(TargetRequest(request.dataset_name, request.configurations,
                                                     request.plans_identifier, request.trainer, request.device))
    if not request.allow_untrusted_cache:
        require_trusted(CacheDir(request.cache_dir))
    return replace(request, dataset_name=dp.dataset_name, configurations=tuple(configurations),
                   log_dir=new_jobs_folder(request.log_dir, dp.dataset_name))


def submit_chain(request: JobRequest, dry_run: bool, report: Reporter
                 ) -> tuple[JobRequest, list[SubmittedJob]]:
    """The checked request and its jobs, queued unless this is a dry run."""
    request = prepare(request, dry_run)
    jobs = plan_jobs(request)
    if dry_run:
        return request, [SubmittedJob(job) for job in jobs]
    return request, submit_jobs(jobs, request.log_dir, report)
