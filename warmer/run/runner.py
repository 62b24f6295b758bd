"""Stage 5: run any command (nnUNetv2_train, nnUNetv2_predict) on the cache and report what torch compiled.

The command gets the cache environment plus the hooks on PYTHONPATH; each of its Python processes leaves a
counters record, and the summary adds them up. The command's exit code is returned unchanged.

An nnU-Net train or predict command runs on a node-local copy of its target's closure (`cache/staging.py`): the
job reads the shared cache once, checks every byte it copies, writes nothing there, and needs only read access.
Any other command, or any command with `--in-place`, runs on the shared cache itself, which torch must be able to
write. Torch would load a garbled cache entry and crash the job, so in place, entries that no longer match their
manifest's checksums are set aside before the command starts: those of the command's target (every fingerprint of
it) when its target has a manifest; those of every manifest otherwise (its graphs may hit entries that other
targets' verifies listed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import warmer
from warmer.cache.checksums import cache_entries
from warmer.cache.findings import findings_of
from warmer.cache.integrity import manifest_files, set_aside
from warmer.cache.layout import CacheDir, nearest_existing
from warmer.cache.manifest import read_manifests
from warmer.cache.staging import StagedCopy, TargetManifests, read_target_manifests, stage
from warmer.errors import UserError
from warmer.hooks import nnunet_warmer_hook_variables as hook
from warmer.ledger import records
from warmer.report import Reporter
from warmer.run.command import NnunetCommand, parse_nnunet_command
from warmer.run.explain import explain_misses
from warmer.values.capability import EAGER_VALUE, EAGER_VARIABLE
from warmer.values.counters import Counters, total
from warmer.values.fingerprint import HostEnvironment, same_releases_here
from warmer.values.profiles import CACHE_DIR_VARIABLE, JobEnvironment, hooks_pythonpath, profile_environment
from warmer.values.targets import TargetKey


@dataclass(frozen=True)
class RunSummary:
    """What a wrapped command did: its exit code and wall time, and torch's counters summed over its processes.

    `per_process` holds each Python process's own record, as its probe wrote it (JSON). `local_copy`: the node-local
    copy it ran on (None: in place), and `compiled_locally` the files it added there."""

    command: list[str]
    cache_dir: Path
    exit_code: int
    wall_seconds: float
    counters: Counters
    per_process: list[dict[str, Any]]
    estimated_seconds_saved: float = 0.0
    explanation: str | None = None
    local_copy: Path | None = None
    compiled_locally: int = 0

    @property
    def processes(self) -> int:
        return len(self.per_process)

    def gpu_names(self) -> list[str]:
        return sorted({p["gpu_name"] for p in self.per_process if p.get("gpu_name")})

    def to_dict(self) -> dict[str, Any]:
        return {**self.counters.to_dict(), "processes": self.processes, "exit_code": self.exit_code,
                "wall_seconds": self.wall_seconds, "command": self.command, "cache_dir": str(self.cache_dir),
                "per_process": self.per_process, "estimated_seconds_saved": self.estimated_seconds_saved,
                "explanation": self.explanation, "local_copy": str(self.local_copy) if self.local_copy else None,
                "compiled_locally": self.compiled_locally}

    def describe(self) -> str:
        return (f"{self.counters.describe()} in {self.processes} process(es); wall {self.wall_seconds:.1f} s; "
                f"exit code {self.exit_code}")


def probe_environment(records_dir: Path, environment: JobEnvironment) -> dict[str, str]:
    return {
        "PYTHONPATH": hooks_pythonpath(environment.get("PYTHONPATH")),
        hook.QUIET: "1",
        hook.PROBE_DIR: str(records_dir),
        hook.PACKAGE_PARENT: str(Path(warmer.__file__).parent.parent),
    }


def job_exports(cache: CacheDir, profile: str, trainer_folders: Sequence[Path], environment: JobEnvironment,
                eager: bool = False) -> dict[str, str]:
    """`nnunet-warmer env`: the variables a training job needs to run on the cache under `profile` (or, `eager`,
    without compiling at all), with `trainer_folders` put first on nnUNet_extTrainer."""
    variables = {**cache.torch_environment(), **profile_environment(profile, environment.get("PYTHONPATH"))}
    if eager:
        variables[EAGER_VARIABLE] = EAGER_VALUE
    if trainer_folders:
        folders = [str(f) for f in trainer_folders]
        folders += [p for p in environment.get("nnUNet_extTrainer").split(os.pathsep) if p]
        variables["nnUNet_extTrainer"] = os.pathsep.join(dict.fromkeys(folders))
    return variables


def run_command(command: list[str], cache: CacheDir, environment: JobEnvironment,
                extra_env: dict[str, str] | None = None, output: IO[str] | None = None) -> RunSummary:
    """Run `command` to completion; return its exit code and the summed counters of its processes.

    The command's stdout and stderr go to `output` when given, else to ours.
    """
    with tempfile.TemporaryDirectory(prefix="nnunet-warmer-run-") as records_dir:
        env = {**environment.variables, **cache.torch_environment(), **(extra_env or {}),
               **probe_environment(Path(records_dir), environment)}
        start = time.perf_counter()
        try:
            code = subprocess.call(command, env=env, stdout=output, stderr=output)
        except FileNotFoundError:
            raise UserError(f"command not found: {command[0]}: check the spelling and PATH") from None
        if code < 0:  # killed by signal N: 128+N, as shells and schedulers report it (137: SIGKILL, the OOM killer)
            code = 128 - code
        wall = time.perf_counter() - start
        per_process = []
        for path in sorted(Path(records_dir).glob("*.json")):
            try:
                per_process.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
    return RunSummary(command, cache.root, code, round(wall, 3),
                      total(Counters.from_dict(p) for p in per_process), per_process)


def _private_cache_if_damaged(cache: CacheDir, report: Reporter, private: Path,
                              keys: list[TargetKey] | None) -> dict[str, str]:
    """Keep the job from loading damaged code of the targets `keys` (None: of any target): quarantine it (the job
    then compiles those graphs again). A user who cannot move it gets the environment of an empty private cache
    instead, so the job compiles everything."""
    try:
        set_aside(cache, lambda message: report(f"nnunet-warmer: {message}"), keys)
        return {}
    except PermissionError:
        report(f"nnunet-warmer: the cache has damaged entries and this user cannot move them to quarantine, so "
               f"this job compiles into an empty private cache ({private}) instead of loading them: ask the cache's "
               f"owner to run `nnunet-warmer warm` (it repairs them)")
        return {CACHE_DIR_VARIABLE: str(private)}


def estimated_seconds_saved(cache: CacheDir, key: TargetKey | None, compile_seconds: float) -> float:
    """Cold compile seconds recorded by the newest manifest of the target, minus what this run still compiled."""
    cold = next((m.cold for m in read_manifests(cache, key) if m.cold is not None), None) if key else None
    return round(max(cold.counters.compile_seconds - compile_seconds, 0.0), 3) if cold else 0.0


def _eager_if_cannot_compile(cache: CacheDir, target: NnunetCommand | None, environment: JobEnvironment,
                             eager: bool, report: Reporter) -> dict[str, str]:
    """Refuse, before it starts, a job whose target a warm found this node type cannot compile; with `eager`,
    run it without torch.compile instead, and say so."""
    findings = findings_of(cache, target.key) if target else []
    if not findings:
        return {}
    host = HostEnvironment.here(environment)
    here = next((f for f in findings if host.differences(f.fingerprint, f.target.device) == []), None)
    if here is None:
        return {}
    if not eager:
        raise UserError(f"{here.cannot_compile.line()} (found by the warm on {here.host}, {here.found_at}); the job "
                        f"was not started: pass --eager-if-cannot-compile to run it eager")
    report(f"nnunet-warmer: {here.cannot_compile.cause} on this node type: running this job eager "
           f"({EAGER_VARIABLE}={EAGER_VALUE}), as --eager-if-cannot-compile asks")
    return {EAGER_VARIABLE: EAGER_VALUE}


def unwritable_part(cache: CacheDir) -> Path | None:
    """The folder of the cache dir this user cannot write where torch needs to (its lock files, generated code, even
    when every graph hits), or None."""
    folder = nearest_existing(cache.torch_locks)
    return None if os.access(folder, os.W_OK) else folder


def cannot_write(folder: Path, target: NnunetCommand | None) -> str:
    fix = ("run it without --in-place, on a node-local copy of its target" if target else
           "nnunet-warmer runs a command whose target it cannot read off its arguments on the shared cache itself; "
           "run nnUNetv2_train or nnUNetv2_predict under it directly (they get a node-local copy)")
    return (f"this user cannot write {folder}, and torch writes its cache dir even when every graph hits (lock files, "
            f"generated code): {fix}, or ask the cache's owner for write access")


def stage_targets(cache: CacheDir, closures: TargetManifests, scratch: Path, report: Reporter) -> StagedCopy:
    """This user's node-local copy of `closures` (those of manifests verified with this host's releases), brought
    up to date; says what it copied and what it could not."""
    for path in closures.unreadable:
        report(f"nnunet-warmer: manifest {path} does not parse, so this job compiles what it lists, locally; "
               f"`nnunet-warmer warm` of the target writes it again")
    manifests = [m for m in closures.manifests if same_releases_here(m.fingerprint)]
    staged = stage(cache, manifests, scratch)
    report(f"nnunet-warmer: {staged.describe()}")
    if staged.rejected:
        report(f"nnunet-warmer: {len(staged.rejected)} files did not match their manifest's checksum and were not "
               f"copied (first: {staged.rejected[0]}): this job compiles what they held, locally; `nnunet-warmer "
               f"check` names them and `nnunet-warmer warm` of the target repairs them")
    return staged


def _run_on_local_copy(command: list[str], cache: CacheDir, target: NnunetCommand, environment: JobEnvironment,
                       extra_env: dict[str, str], scratch: Path, closures: TargetManifests, report: Reporter,
                       output: IO[str] | None) -> RunSummary:
    """Stage the target's closures and run on that copy."""
    staged = stage_targets(cache, closures, scratch, report)
    before = set(cache_entries(staged.local))
    summary = run_command(command, staged.local, environment, extra_env, output=output)
    added = set(cache_entries(staged.local)) - before
    if added:
        report(f"nnunet-warmer: this job compiled {len(added)} files into its node-local copy {staged.local.root}; "
               f"they stay there, unpublished: `nnunet-warmer warm` the target to share them")
    explanation = None
    if staged.rejected and summary.counters.misses:
        explanation = (f"{summary.counters.misses} misses: {len(staged.rejected)} files of the target's closure did "
                       f"not match their checksum and were left out of the node-local copy (above); `nnunet-warmer "
                       f"warm` of the target repairs them")
    return dataclasses.replace(summary, cache_dir=cache.root, local_copy=staged.local.root,
                               compiled_locally=len(added), explanation=explanation)


def run_and_record(command: list[str], cache: CacheDir, environment: JobEnvironment, report: Reporter,
                   output: IO[str] | None = None, eager_if_cannot_compile: bool = False,
                   scratch: Path | None = None, closures: TargetManifests | None = None) -> RunSummary:
    """`nnunet-warmer run`: refuse (or run eager) a job this node cannot compile, run it on a node-local copy of its
    target in `scratch` (None, or a command whose target is unknown: in place, after setting damage aside), explain
    misses, append to the ledger, report the summary. `closures`: the target's manifests, as the job's trust check
    read them (default: read here)."""
    target: NnunetCommand | None = parse_nnunet_command(command)
    eager = _eager_if_cannot_compile(cache, target, environment, eager_if_cannot_compile, report)
    if target is not None and scratch is not None:
        closures = closures if closures is not None else read_target_manifests(cache, [target.key])
        summary = _run_on_local_copy(command, cache, target, environment, eager, scratch, closures, report, output)
    else:
        unwritable = unwritable_part(cache)
        if unwritable is not None and target is not None:
            raise UserError(cannot_write(unwritable, target))
        checked = [target.key] if target and manifest_files(cache, [target.key]) else None
        with tempfile.TemporaryDirectory(prefix="nnunet-warmer-private-cache-") as private:
            private_env = _private_cache_if_damaged(cache, report, Path(private), checked)
            summary = run_command(command, cache, environment, {**private_env, **eager}, output=output)
        if unwritable is not None and not private_env and summary.exit_code != 0:
            summary = dataclasses.replace(summary, explanation=cannot_write(unwritable, target))
    summary = dataclasses.replace(
        summary,
        estimated_seconds_saved=estimated_seconds_saved(cache, target.key if target else None,
                                                        summary.counters.compile_seconds),
        explanation=summary.explanation or explain_misses(cache, target, summary.counters, environment))
    ledger_fields = {k: v for k, v in summary.to_dict().items()
                     if k not in ("per_process", "command", "cache_dir", "local_copy")}
    records.append_or_warn(cache, {"kind": "run", "command": command, **(target.ledger_fields() if target else {}),
                                   "gpu_name": ", ".join(summary.gpu_names()), **ledger_fields}, report)
    if summary.explanation:
        report(f"nnunet-warmer: {summary.explanation}")
    report(f"nnunet-warmer: {summary.describe()}")
    return summary
