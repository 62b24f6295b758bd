"""The two SLURM commands `submit` runs, `sbatch --parsable` and `scancel`, with their errors as one line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from warmer.errors import UserError


class SbatchError(Exception):
    """sbatch did not queue a job; the message is sbatch's own last error line."""


def require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise UserError("sbatch is not on PATH: run submit on a SLURM login node (or load the site's slurm "
                        "module), or pass --dry-run to only print the job scripts")


def _last_error(stderr: str, fallback: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [fallback])[-1]


def sbatch(script: Path, options: list[str]) -> str:
    """Queue `script` (its `#SBATCH` lines plus `options`) and return the job ID. `--parsable` prints `id` or
    `id;cluster`."""
    result = subprocess.run(["sbatch", "--parsable", *options, str(script)], capture_output=True, text=True)
    job_id = result.stdout.strip().split(";")[0]
    if result.returncode != 0 or not job_id.isdigit():
        raise SbatchError(_last_error(result.stderr, f"sbatch exited with code {result.returncode}"))
    return job_id


def scancel(job_ids: list[str]) -> str | None:
    """Cancel the jobs; None when scancel succeeded, else its error line."""
    if not job_ids:
        return None
    result = subprocess.run(["scancel", *job_ids], capture_output=True, text=True)
    return None if result.returncode == 0 else _last_error(result.stderr, f"scancel exited {result.returncode}")
