"""Wire the stages for one target: replay in a fresh process, verify in another, publish the manifest.

A target that already has a manifest for this fingerprint is re-verified only (seconds, not minutes);
if that verification misses, it is compiled again. A compile replay that missed nothing (every graph was in
the cache already: another target's, or a manifest that was lost) was itself a fresh-process replay with zero
misses, so it stands as the verify. Each manifest lists the closure its target's verify recorded. All of it
runs under the target's lock. The ranks of a DDP run are warmed as one group: their replays run at once in one
process group, each on its device. Publishes hold the cache's publish lock shared (`gc` deletes under it
exclusive); a verify that missed, or a publish whose closure files went, makes one more compile and verify
(a `gc` may have deleted what the compile loaded), then the warm fails with nothing published.
Torch builds a kernel at its final path, so a compiler killed mid-write leaves it half-written, and torch then
loads it rather than building it again (the loader refuses it, or the process dies of SIGBUS): when a replay
fails, every kernel no manifest lists whose ELF headers point past its end is moved aside, and the warm starts
over if one was.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from warmer.cache.files import remove_abandoned_temps
from warmer.cache.findings import clear_finding, record_finding
from warmer.cache.integrity import set_aside, set_aside_cut_short_kernels
from warmer.cache.layout import CacheDir
from warmer.cache.locking import LockPolicy, publish_lock, target_lock
from warmer.cache.manifest import Manifest, matching_manifest, new_manifest, read_manifests
from warmer.errors import WarmError
from warmer.ledger import records
from warmer.pipeline import verify
from warmer.pipeline.replay import PROGRESS_PREFIX
from warmer.report import Reporter
from warmer.values.capability import CannotCompile, CannotCompileError
from warmer.values.fingerprint import fingerprint_id, target_fingerprint
from warmer.values.plans import DatasetPlans
from warmer.values.profiles import JobEnvironment
from warmer.values.results import ReplayResult, ReplaySpec
from warmer.values.targets import Target

WarmState = Literal["warm", "already-warm", "no-compile", "cannot-compile"]
CUT_SHORT_SET_ASIDE_AT_MOST = 3  # rounds of moving half-written kernels aside before a warm gives up


@dataclass(frozen=True)
class WarmOutcome:
    target: Target
    state: WarmState
    message: str
    cold: ReplayResult | None = None
    verify: ReplayResult | None = None
    manifest: Path | None = None

    def ledger_record(self) -> dict[str, Any]:
        replay = (self.cold if self.state == "warm" else self.verify) or ReplayResult(True, {})
        gpu_name = replay.fingerprint.get("gpu_name", "none")
        t = self.target
        return {"kind": "warm", "state": self.state, "dataset": t.dataset_name, "configuration": t.configuration,
                "trainer": t.trainer, "plans": t.plans_identifier, "batch_per_rank": t.batch_per_rank,
                "device": t.device, "gpu_name": "" if gpu_name == "none" else gpu_name,
                **replay.counters.to_dict(), "wall_seconds": replay.wall_seconds}

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target.to_dict(), "label": self.target.label, "state": self.state,
                "message": self.message, "cold": self.cold.to_dict(with_closure=False) if self.cold else None,
                "verify": self.verify.to_dict(with_closure=False) if self.verify else None,
                "manifest": str(self.manifest) if self.manifest else None}


@dataclass(frozen=True)
class GroupResult:
    """What warming one configuration (one target, or the ranks of one DDP run) came to; `cannot_compile` when it
    failed because this node cannot compile at all."""

    outcomes: list[WarmOutcome]
    failure: str | None = None
    cannot_compile: CannotCompile | None = None


@dataclass(frozen=True)
class _Member:
    """One target of a warm group with its fingerprint: what its lock, its manifest and its replays are keyed by."""

    target: Target
    fingerprint: dict[str, str]
    fingerprint_id: str

    @property
    def ddp(self) -> bool:
        return self.target.world_size > 1


def free_local_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class _ReplayProcess:
    """A replay running in a fresh Python process; progress lines are relayed, everything else goes to its log."""

    spec: ReplaySpec
    scratch: Path
    process: subprocess.Popen[str]
    log: TextIO
    relay: threading.Thread

    @classmethod
    def start(cls, spec: ReplaySpec, env: dict[str, str], label: str, report: Reporter) -> _ReplayProcess:
        scratch = Path(tempfile.mkdtemp(prefix="nnunet-warmer-"))
        (scratch / "spec.json").write_text(json.dumps(spec.to_dict()))
        log = open(scratch / "replay.log", "w")  # noqa: SIM115 (closed in `finish`, after the process)
        process = subprocess.Popen(
            [sys.executable, "-m", "warmer.pipeline.replay", str(scratch / "spec.json"), str(scratch / "result.json")],
            env={**env, "nnUNet_results": str(scratch / "results")}, stdout=log, stderr=subprocess.PIPE, text=True)
        relay = threading.Thread(target=_relay, args=(process, log, label, report), daemon=True)
        relay.start()
        return cls(spec, scratch, process, log, relay)

    def failed(self) -> bool:
        return self.process.poll() not in (None, 0)

    def kill(self) -> None:
        """Kill the replay and every process it started (inductor's compile workers, the C++ compiler). It stays in
        the warmer's process group, so that killing a warm's group (a scheduler, the fault-injection test) kills
        its replays too. Each is stopped first, so that none starts another one that the kill would miss (seen
        under load: a compile worker left running after its replay was killed)."""
        stopped: set[int] = set()
        while found := {self.process.pid, *_descendants(self.process.pid)} - stopped:
            for pid in found:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            stopped |= found
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def abandon(self) -> None:
        """Kill it, wait for it, and remove its scratch folder: what a warm that is stopped leaves behind."""
        self.kill()
        self.process.wait()
        self.relay.join()
        self.log.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def finish(self, step: str) -> ReplayResult | WarmError:
        """The result, or the error (naming the log) when the replay failed: a `CannotCompileError` when it died of
        something that stops every compile on this node."""
        self.relay.join()
        self.log.close()
        result_path = self.scratch / "result.json"
        data = json.loads(result_path.read_text()) if result_path.exists() else {}
        if self.process.returncode != 0 or "error" in data or not data:
            log = str(self.scratch / "replay.log")
            if data.get("cannot_compile"):
                return CannotCompileError(CannotCompile.from_dict(data["cannot_compile"]), log)
            error = data.get("error", f"replay exited with code {self.process.returncode}")
            return WarmError(f"{self.spec.target.label}: {step} failed: {error} (full log: {log})")
        return ReplayResult.from_dict(data)


def _descendants(pid: int) -> list[int]:
    """Every living process below `pid`, read from /proc (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _relay(process: subprocess.Popen[str], log: TextIO, label: str, report: Reporter) -> None:
    """Progress lines go to `report`; everything else the replay writes to stderr goes to its log."""
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith(PROGRESS_PREFIX):
            report(f"{label}: {line[len(PROGRESS_PREFIX):].rstrip()}")
        else:
            log.write(line)


def run_replays(targets: list[Target], cache: CacheDir, step: str, report: Reporter, environment: JobEnvironment,
                allow_eager: bool = False, steady_steps: int = 0) -> list[ReplayResult]:
    """Replay `targets` at once, one fresh process each; several targets are the ranks of one DDP group.

    `allow_eager` and `steady_steps` (extra train steps, timed) are for the benchmarks. When one rank fails the
    others would wait for it in a collective forever, so they are stopped."""
    env = {**environment.variables, **cache.torch_environment(), "PYTHONUNBUFFERED": "1"}
    if len(targets) > 1:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_local_port()))
    runs: list[_ReplayProcess] = []
    try:
        for target in targets:
            runs.append(_ReplayProcess.start(ReplaySpec(target, allow_eager, steady_steps), env,
                                             f"{step} rank {target.rank}" if len(targets) > 1 else step, report))
        while any(run.process.poll() is None for run in runs):
            if any(run.failed() for run in runs):
                for run in runs:
                    if run.process.poll() is None:
                        run.kill()
            time.sleep(0.2)
    except BaseException:  # Ctrl-C, or a service told to stop: no replay may outlive the warm
        for run in runs:
            run.abandon()
        raise
    finished = [run.finish(step) for run in runs]
    node = next((result for result in finished if isinstance(result, CannotCompileError)), None)
    if node is not None:
        raise node
    errors = [str(result) for result in finished if isinstance(result, WarmError)]
    if errors:
        raise WarmError("; ".join(errors))
    for run in runs:
        shutil.rmtree(run.scratch, ignore_errors=True)
    return [result for result in finished if isinstance(result, ReplayResult)]


def run_replay(target: Target, cache: CacheDir, step: str, report: Reporter, environment: JobEnvironment,
               allow_eager: bool = False, steady_steps: int = 0) -> ReplayResult:
    """One replay of `target` in a fresh Python process (see `run_replays`)."""
    (result,) = run_replays([target], cache, step, report, environment, allow_eager, steady_steps)
    return result


def warm_targets(dp: DatasetPlans, targets: list[Target], cache: CacheDir, environment: JobEnvironment,
                 lock: LockPolicy, report: Reporter) -> Iterator[GroupResult]:
    """Warm each configuration's targets (one, or the ranks of a DDP run) in turn; a group that fails is reported
    and the next one is warmed."""
    groups = [list(ranks) for _, ranks in itertools.groupby(targets, key=lambda t: t.configuration)]
    for index, group in enumerate(groups, 1):
        first = group[0]
        devices = ", ".join(dict.fromkeys(t.device for t in group))
        where = devices if len(group) == 1 else f"{len(group)} DDP ranks on {devices}"
        prefix = f"[{index}/{len(groups)}] {first.configuration} ({first.trainer}, batch " \
                 f"{'+'.join(str(t.batch_per_rank) for t in group)}, {where})"
        report(f"{prefix}: warming")
        try:
            yield GroupResult(warm_group(dp, group, cache, lambda msg, p=prefix: report(f"{p}: {msg}"),
                                         environment, lock))
        except CannotCompileError as e:  # each configuration still gets its own verdict: a warm one loads, not compiles
            report(f"{prefix}: FAILED: {e}")
            yield GroupResult([], str(e), e.finding)
        except WarmError as e:
            report(f"{prefix}: FAILED: {e}")
            yield GroupResult([], str(e))


def warm_target(dp: DatasetPlans, target: Target, cache: CacheDir, report: Reporter, environment: JobEnvironment,
                lock: LockPolicy = LockPolicy()) -> WarmOutcome:  # noqa: B008 (frozen)
    """Warm one single-GPU target (see `warm_group`)."""
    (outcome,) = warm_group(dp, [target], cache, report, environment, lock)
    return outcome


def warm_group(dp: DatasetPlans, group: list[Target], cache: CacheDir, report: Reporter,
               environment: JobEnvironment, lock: LockPolicy = LockPolicy()) -> list[WarmOutcome]:  # noqa: B008
    """Warm one target, or all ranks of one DDP run together, under their locks (taken in rank order).

    A second warmer waits, then finds the manifests and only verifies."""
    members = []
    for target in group:
        fingerprint = target_fingerprint(dp, target, environment)
        members.append(_Member(target, fingerprint, fingerprint_id(fingerprint)))
    with contextlib.ExitStack() as locks:
        for member in members:
            locks.enter_context(target_lock(cache.lock_path(member.target.key, member.fingerprint_id), lock, report))
        try:
            outcomes = _warm_locked(members, cache, report, environment, lock)
        except CannotCompileError as e:
            for m in members:
                record_finding(cache, m.target, m.fingerprint, m.fingerprint_id, e.finding)
                gpu_name = m.fingerprint.get("gpu_name", "none")
                records.append_or_warn(cache, {**WarmOutcome(m.target, "cannot-compile", str(e)).ledger_record(),
                                               "gpu_name": "" if gpu_name == "none" else gpu_name,
                                               "reason": e.finding.line()}, report)
            raise
    for member in members:
        clear_finding(cache, member.target.key, member.fingerprint_id)
    for outcome in outcomes:
        if outcome.state != "no-compile":
            records.append_or_warn(cache, outcome.ledger_record(), report)
    return outcomes


def _warm_locked(members: list[_Member], cache: CacheDir, report: Reporter, environment: JobEnvironment,
                 lock: LockPolicy) -> list[WarmOutcome]:
    _remove_litter(members, cache, report)
    set_aside(cache, report, [m.target.key for m in members])
    rounds = 0
    while True:
        try:
            return _reverify_or_compile(members, cache, report, environment, lock)
        except CannotCompileError:
            raise
        except WarmError:  # a replay failed: did a warm killed before this one leave a kernel half-written?
            rounds += 1
            if rounds > CUT_SHORT_SET_ASIDE_AT_MOST or not set_aside_cut_short_kernels(cache, report):
                raise


def _reverify_or_compile(members: list[_Member], cache: CacheDir, report: Reporter, environment: JobEnvironment,
                         lock: LockPolicy) -> list[WarmOutcome]:
    existing = [matching_manifest(read_manifests(cache, m.target.key), m.fingerprint, m.fingerprint_id)
                for m in members]
    if all(manifest is not None for manifest in existing):
        reverified = _reverify(members, [m for m in existing if m is not None], cache, report, environment, lock)
        if reverified is not None:
            return reverified
        report("re-verify: the cache no longer hits; compiling again")
    outcomes = _compile_and_verify(members, cache, report, environment, lock, last_try=False)
    if outcomes is None:
        report("compiling again: files this warm loaded may have been deleted meanwhile (a gc, or another "
               "warmer's quarantine)")
        outcomes = _compile_and_verify(members, cache, report, environment, lock, last_try=True)
    if outcomes is None:
        raise WarmError(f"{members[0].target.label}: files its verify loaded were deleted before the publish twice "
                        f"(gc or quarantine running meanwhile); nothing was published: warm again")
    return outcomes


def _remove_litter(members: list[_Member], cache: CacheDir, report: Reporter) -> None:
    litter = sum(remove_abandoned_temps(cache.manifest_folder(m.target.key)) for m in members)
    if litter:
        report(f"removed {litter} temp files of manifest writes that died mid-write")


def _targets(members: list[_Member]) -> list[Target]:
    return [m.target for m in members]


def _reverify(members: list[_Member], manifests: list[Manifest], cache: CacheDir, report: Reporter,
              environment: JobEnvironment, lock: LockPolicy) -> list[WarmOutcome] | None:
    """Outcomes of targets that are still warm, verified again from a fresh process; None when that misses or its
    files went before the publish."""
    checks = run_replays(_targets(members), cache, "re-verify", report, environment)
    if any(verify.problems(check.counters, m.ddp) for m, check in zip(members, checks, strict=True)):
        return None
    published = _publish(cache, members, [None] * len(members), checks, manifests, lock, report)
    if published is None:
        return None
    return [WarmOutcome(m.target, "already-warm", "already warm, verified again from a fresh process",
                        previous.cold, check, manifest.path)
            for m, previous, check, manifest in zip(members, manifests, checks, published, strict=True)]


def _publish(cache: CacheDir, members: list[_Member], colds: list[ReplayResult | None], checks: list[ReplayResult],
             previous: list[Manifest] | list[None], lock: LockPolicy, report: Reporter) -> list[Manifest] | None:
    """Write the manifests of verified targets, each listing the closure its verify recorded, under the shared
    publish lock, so that no `gc` deletes in between. None, and nothing written, when a closure file is gone since
    the verify read it (a `gc` deleted it, or another warmer moved it to quarantine)."""
    with publish_lock(cache.publish_lock, lock, report, exclusive=False):
        try:
            manifests = [new_manifest(cache, m.target, m.fingerprint, m.fingerprint_id, cold, check, before)
                         for m, cold, check, before in zip(members, colds, checks, previous, strict=True)]
        except FileNotFoundError as e:
            report(f"{e.filename} vanished between the verify and the publish; nothing was published")
            return None
        return [manifest.write() for manifest in manifests]


def _compile_and_verify(members: list[_Member], cache: CacheDir, report: Reporter, environment: JobEnvironment,
                        lock: LockPolicy, last_try: bool) -> list[WarmOutcome] | None:
    """Compile, verify from a fresh process and publish. None, with nothing published, when files went meanwhile:
    before the publish, or (unless `last_try`) between the compile and the verify, which then misses."""
    colds = run_replays(_targets(members), cache, "compile", report, environment)
    if not all(cold.compiles for cold in colds):
        target = members[0].target
        return [WarmOutcome(target, "no-compile",
                            f"{target.trainer} does not use torch.compile on {target.device} (nnU-Net turns it off "
                            f"on CPU, MPS and Windows, and when nnUNet_compile is false): nothing to warm")]
    for m, cold in zip(members, colds, strict=True):
        if cold.fingerprint != m.fingerprint:
            raise WarmError(f"{m.target.label}: the replay process saw another environment than this one "
                            f"({sorted(k for k in m.fingerprint if m.fingerprint[k] != cold.fingerprint.get(k))})")
    if any(verify.problems(cold.counters, m.ddp) for m, cold in zip(members, colds, strict=True)):
        checks = run_replays(_targets(members), cache, "verify", report, environment)
    else:  # every graph came from the cache: that fresh process already proved it warm
        checks = colds
        report("compile: every graph came from the cache, so this replay was the fresh-process verify")
    for m, check in zip(members, checks, strict=True):
        found = verify.problems(check.counters, m.ddp)
        if found and not last_try:
            report(f"verify: {', '.join(found)}; nothing was published")
            return None
        if found:
            raise WarmError(f"{m.target.label}: verification from a fresh process saw {', '.join(found)}; "
                            f"nothing was published (rerun with TORCH_LOGS=+inductor to see the cache keys)")
    published = _publish(cache, members, list(colds), checks, [None] * len(members), lock, report)
    if published is None:
        return None
    outcomes = []
    for m, cold, check, manifest in zip(members, colds, checks, published, strict=True):
        message = (f"warm: every graph was in the cache already, verified {check.seconds:.1f} s"
                   if check is cold else f"warm: cold {cold.seconds:.1f} s -> verified "
                   f"{check.seconds:.1f} s ({verify.speedup(cold, check)}x)")
        outcomes.append(WarmOutcome(m.target, "warm", message, cold, check, manifest.path))
    return outcomes
