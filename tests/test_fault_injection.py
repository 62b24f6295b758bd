"""Fault injection (issue 4): the warmer SIGKILLed at random points of replay, verify and manifest write.

Each trial starts `nnunet-warmer warm` in a process group of its own and kills the whole group (warmer, replay
processes, compilers) with SIGKILL, as a lost node or the OOM killer would:
- replay: at a random moment of a compile replay that compiles and writes (AOT entries, a kernel `.so` and
  sometimes an FX entry were deleted first: torch's cache writes, inductor and the C++ compiler are at work);
- verify: at a random moment of the fresh-process verify that follows such a replay;
- re-verify: at a random moment of an already-warm target's re-verify;
- manifest: inside the manifest write (tests/crashing_warmer.py): a partial temp file, a complete temp file
  not yet renamed, or renamed with the directory not yet fsynced; after a re-verify, after a compile replay
  that missed nothing, or after a compile and a verify.
After every kill, `status` may say warm only if a fresh verify then misses nothing (the next warm must find the
target already warm, verified again from a fresh process), and the next `warm` completes with zero FX and AOT
misses and leaves no temp file. The trials start from copies of the cache the concurrency test warmed, in two
lanes side by side. The seed and every trial go to fault-injection.json in the test's tmp dir;
WARMER_FAULT_SEED=N replays a run's random choices.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from warmer.cache.integrity import damaged_entries
from warmer.cache.layout import CacheDir
from warmer.pipeline.status import target_status
from warmer.values.plans import DatasetPlans, load_plans
from warmer.values.profiles import JobEnvironment
from warmer.values.targets import Target, build_targets

from .helpers import CONCURRENT_CONFIGURATION, CPU_TRAINER, job_env, warm_command

pytestmark = pytest.mark.e2e
TRIALS = 20
LANES = 2  # two cache copies killed side by side: the trials are mostly single-threaded Python start-up
TRIALS_PER_LANE = TRIALS // LANES
# each lane's order of trials: 4 + 4 kills in replays and verifies that compile, 6 in re-verifies, 6 in manifest
# writes over both lanes (the cheap kinds more often: every trial is followed by a whole warm)
LANE_KINDS = ("replay", "verify", "re-verify", "manifest", "re-verify", "manifest", "replay", "verify",
              "re-verify", "manifest")
CRASH_POINTS = ("partial", "written", "renamed")
STAGES = {": compile: ": "replay", ": verify: ": "verify", ": re-verify: ": "re-verify"}
CRASHING_WARMER = Path(__file__).parent / "crashing_warmer.py"


@dataclass
class Trial:
    kind: str
    state: str  # before the warm: "warm", "no manifest" or "entries deleted"
    how: str  # "SIGKILL 3.2 s into the stage" or "crash at <point>"
    killed_in: str = ""  # the stage whose progress line came last before the kill
    status: str = ""
    next_state: str = ""
    next_fx_miss: int = -1
    next_aot_miss: int = -1


class Warm:
    """One `nnunet-warmer warm` in a process group of its own; its stderr lines are kept with their times."""

    def __init__(self, command: list[str], stdout: Path | None = None) -> None:
        with open(stdout or os.devnull, "w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE, text=True,
                                            start_new_session=True)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append((time.monotonic(), line.rstrip()))

    def stage_started(self, marker: str, timeout: float = 600) -> float | None:
        """When the first line of a stage came; None if the warm ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((t for t, line in list(self.lines) if marker in line), None)
            if hit is not None or self.process.poll() is not None:
                return hit
            time.sleep(0.05)
        raise AssertionError(f"no '{marker.strip()}' line in {timeout} s: {self.lines[-5:]}")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # it ended just before
            os.killpg(self.process.pid, signal.SIGKILL)

    def finish(self) -> tuple[int, str]:
        """Exit code (-9 when killed) and the stage of the last progress line."""
        code = self.process.wait(timeout=600)
        self._reader.join(timeout=30)
        stages = [stage for _, line in self.lines for marker, stage in STAGES.items() if marker in line]
        return code, stages[-1] if stages else "lock"


def _prepare(cache: Path, kind: str, rng: random.Random) -> str:
    """Put the target in the state the trial needs; returns it ("warm", "no manifest", "entries deleted").

    A compile replay that misses nothing stands as the verify, so a verify stage needs misses: deleted AOT
    entries (cheap to rebuild: the FX entries still hit), and for the replay kind a kernel `.so` (the C++
    compiler writes it in place) and sometimes an FX entry (inductor compiles the graph again)."""
    state = {"replay": "entries deleted", "verify": "entries deleted", "re-verify": "warm",
             "manifest": rng.choice(["warm", "no manifest", "entries deleted"])}[kind]
    if state == "warm":
        return state
    shutil.rmtree(cache / "manifests")
    if state == "entries deleted":
        inductor = cache / "inductor"
        doomed = rng.sample(sorted(p for p in (inductor / "aotautograd").rglob("*") if p.is_file()), rng.randint(1, 2))
        if kind == "replay":
            doomed += rng.sample(sorted(inductor.rglob("*.so")), rng.randint(1, 2))
            if rng.random() < 0.5:
                doomed += rng.sample(sorted(p for p in (inductor / "fxgraph").rglob("*") if p.is_file()), 1)
        for path in doomed:
            path.unlink()
    return state


def _kill_at_random(command: list[str], kind: str, rng: random.Random, stage_seconds: dict[str, float],
                    state: str) -> tuple[Trial, int]:
    """Start a warm and SIGKILL it at a random moment of the trial's stage, or crash it inside the manifest
    write; returns the trial and the warm's exit code."""
    if kind == "manifest":
        point, fraction = rng.choice(CRASH_POINTS), rng.random()
        warm = Warm([sys.executable, str(CRASHING_WARMER), point, str(fraction), *command[1:]])
        trial = Trial(kind, state, f"crash at {point}" + (f" ({fraction:.0%} written)"
                                                                  if point == "partial" else ""))
    else:
        warm = Warm(command)
        marker = next(m for m, stage in STAGES.items() if stage == kind)
        delay = rng.uniform(0, 0.9 * stage_seconds[kind])
        trial = Trial(kind, state, f"SIGKILL {delay:.1f} s into {kind}")
        if warm.stage_started(marker) is not None:
            time.sleep(delay)
            warm.kill()
    code, trial.killed_in = warm.finish()
    if kind == "manifest" and code == -signal.SIGKILL:
        trial.killed_in = "manifest write"
    return trial, code


def _record_stage_seconds(warm: Warm, stage_seconds: dict[str, float]) -> None:
    """Stage lengths seen in a completed warm, so the next kills land inside the stage."""
    starts = {stage: next((t for t, line in warm.lines if marker in line), None) for marker, stage in STAGES.items()}
    end = warm.lines[-1][0]
    if starts["replay"]:
        stage_seconds["replay"] = (starts["verify"] or end) - starts["replay"]
    if starts["verify"]:
        stage_seconds["verify"] = end - starts["verify"]
    if starts["re-verify"]:
        stage_seconds["re-verify"] = end - starts["re-verify"]


def _lane(cache: Path, target: Target, dp: DatasetPlans, rng: random.Random, trials: list[Trial], context: str,
          record: Path) -> None:
    """Kill warms of one cache copy until it has its share of trials, checking the state after each kill."""
    command = warm_command(cache, target.configuration)
    stage_seconds = {"replay": 10.0, "verify": 12.0, "re-verify": 12.0}
    for attempt in range(2 * TRIALS_PER_LANE):  # a warm that ends before its kill does not count
        if len(trials) == TRIALS_PER_LANE:
            return
        kind = LANE_KINDS[attempt % len(LANE_KINDS)]
        trial, code = _kill_at_random(command, kind, rng, stage_seconds, _prepare(cache, kind, rng))
        where = f"{context}, trial {len(trials) + 1}: {trial}"
        assert code in (-signal.SIGKILL, 0), where
        trial.status = target_status(dp, target, CacheDir(cache), JobEnvironment.with_profile("default")).state

        follow_up = Warm([*command, "--json"], stdout=record.with_suffix(".next-warm.json"))
        follow_code, _ = follow_up.finish()
        assert follow_code == 0, f"{where}: the next warm failed: {[line for _, line in follow_up.lines][-10:]}"
        outcome = json.loads(record.with_suffix(".next-warm.json").read_text())["targets"][0]
        trial.next_state = outcome["state"]
        trial.next_fx_miss = outcome["verify"]["counters"]["fx_miss"]
        trial.next_aot_miss = outcome["verify"]["counters"]["aot_miss"]
        if trial.status == "warm":
            assert trial.next_state == "already-warm", f"{where}: status said warm, but a fresh verify missed"
        assert trial.next_fx_miss == 0 and trial.next_aot_miss == 0, where
        assert not list((cache / "manifests").rglob("*.tmp")), f"{where}: temp files left behind"
        _record_stage_seconds(follow_up, stage_seconds)
        if code == -signal.SIGKILL:
            trials.append(trial)
        record.write_text(json.dumps([asdict(t) for t in trials], indent=1))
    raise AssertionError(f"{context}: only {len(trials)} warms were killed before they ended")


def test_sigkill_at_random_points_never_shows_warm_falsely_and_the_next_warm_completes(
        nnunet_env, concurrently_warmed, tmp_path: Path) -> None:
    seed = int(os.environ.get("WARMER_FAULT_SEED", random.randrange(1 << 30)))
    seed_cache, _ = concurrently_warmed
    dp = load_plans("990")
    (target,) = build_targets(dp, [CONCURRENT_CONFIGURATION], CPU_TRAINER, ["cpu"])
    environment = JobEnvironment.with_profile("default")  # this process sees what the CLI sees
    assert target_status(dp, target, CacheDir(seed_cache), environment).state == "warm"
    lanes: list[list[Trial]] = [[] for _ in range(LANES)]
    errors: list[BaseException] = []

    def lane(index: int) -> None:
        cache = tmp_path / f"lane{index}" / "cache"
        shutil.copytree(seed_cache, cache)
        try:
            _lane(cache, target, dp, random.Random(seed * LANES + index), lanes[index],
                  f"seed {seed}, lane {index}", tmp_path / f"lane{index}" / "trials.json")
            assert damaged_entries(CacheDir(cache)) == [], f"seed {seed}, lane {index}: damage left"
        except BaseException as e:  # re-raised in the test's own thread
            errors.append(e)

    threads = [threading.Thread(target=lane, args=(index,)) for index in range(LANES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    trials = [trial for lane_trials in lanes for trial in lane_trials]
    (tmp_path / "fault-injection.json").write_text(json.dumps({"seed": seed, "trials": [asdict(t) for t in trials]},
                                                              indent=1))
    assert len(trials) >= TRIALS
    killed_in = {t.killed_in for t in trials}
    assert {"replay", "verify", "re-verify", "manifest write"} <= killed_in, (seed, killed_in)


def test_a_kernel_a_killed_compiler_left_half_written_is_set_aside_and_built_again(planned, concurrently_warmed,
                                                                                   tmp_path: Path) -> None:
    """Torch builds a kernel at its final path and, once a file is there, loads it instead of building it: a C++
    compiler killed mid-write (seen in the trials above) leaves one cut short that no manifest lists yet. The next
    warm moves it to quarantine, builds it again and verifies with no miss."""
    cache = tmp_path / "cache"
    shutil.copytree(concurrently_warmed[0], cache)
    (manifest,) = (cache / "manifests").rglob("*.json")
    kernel = cache / next(p for p in json.loads(manifest.read_text())["entries"] if p.endswith(".so"))
    shutil.rmtree(cache / "manifests")  # the killed warm published nothing
    cut_short = kernel.stat().st_size // 3
    os.truncate(kernel, cut_short)
    result = subprocess.run(warm_command(cache, CONCURRENT_CONFIGURATION, "--json"), capture_output=True, text=True,
                            env={**os.environ, **job_env(planned)}, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "left cut short" in result.stderr, result.stderr[-3000:]
    (report,) = json.loads(result.stdout)["targets"]
    assert report["state"] == "warm", report
    assert (report["verify"]["counters"]["fx_miss"], report["verify"]["counters"]["aot_miss"]) == (0, 0), report
    (moved,) = (cache / "quarantine").rglob(kernel.name)
    assert moved.stat().st_size == cut_short and kernel.stat().st_size > cut_short
