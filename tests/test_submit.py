"""`submit` on a real one-node SLURM (`.ci/slurm up`; node Features typeA,typeB stand in for GPU types).

What SLURM itself records is the evidence: the warm job's end and the training tasks' starts (scontrol), the
state a failed warm leaves its dependants in, the features and dependency of each queued array. The trainings are
real `nnUNetv2_train` runs under `nnunet-warmer run`, whose summaries must show zero FX and AOTAutograd misses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from .helpers import BIN, CPU_TRAINER, cli, job_env, without_compilers

pytestmark = pytest.mark.slurm
FOLDS = ["0", "1"]


def slurm_up() -> bool:
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and result.stdout.strip() in ("idle", "mixed", "allocated")


@pytest.fixture(scope="module")
def slurm() -> None:
    if not slurm_up():
        if os.environ.get("CI"):
            pytest.fail("no SLURM answering on this machine: .ci/run starts one with .ci/slurm up")
        pytest.skip("no SLURM answering here: start one with `.ci/slurm up` (root; installs slurm-wlm and munge)")


def jobs(job_id: str) -> list[dict[str, str]]:
    """`scontrol show job -o`: one record per job or array task, as Key=Value pairs."""
    result = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True)
    return [dict(re.findall(r"(\w[\w/:]*)=(\S*)", line)) for line in result.stdout.splitlines() if line.strip()]


def queued(job_ids: list[str]) -> list[str]:
    """The jobs (array tasks included) that are still pending or running."""
    if not job_ids:
        return []
    result = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i"], capture_output=True, text=True)
    return result.stdout.split()


def wait_until_done(job_ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while queued(job_ids):
        assert time.monotonic() < deadline, f"jobs still queued after {timeout:.0f} s: {queued(job_ids)}"
        time.sleep(2)


def epoch(slurm_time: str) -> float:
    return datetime.strptime(slurm_time, "%Y-%m-%dT%H:%M:%S").timestamp()


def submit(planned, jobs_dir: Path, cache: Path, *extra: str, trainer: str = CPU_TRAINER,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return cli("submit", "-d", "990", "-c", "2d", "-f", *FOLDS, "-tr", trainer, "--device", "cpu",
               "--cache-dir", str(cache), "--jobs-dir", str(jobs_dir), *extra, env=env or job_env(planned))


def submitted(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def chain(slurm, planned, tmp_path_factory) -> tuple[Path, Path, dict]:
    """One cold `submit` of Dataset990 2d, folds 0 and 1, run to the end: the cache, the jobs dir, and what
    submit printed."""
    root = tmp_path_factory.mktemp("slurm")
    cache, jobs_dir = root / "cache", root / "jobs"
    out = submitted(submit(planned, jobs_dir, cache, "--json"))
    wait_until_done([j["id"] for j in out["jobs"]], timeout=1500)
    return cache, jobs_dir, out


def test_cold_chain_warms_before_training_and_trainings_miss_nothing(chain):
    cache, _, out = chain
    warm, train = out["jobs"]
    assert (warm["kind"], train["kind"], train["folds"], train["depends_on"]) == ("warm", "train", [0, 1], warm["id"])
    (warm_record,) = jobs(warm["id"])
    assert warm_record["JobState"] == "COMPLETED", Path(warm["logs"][0]).read_text()[-3000:]
    warm_end = epoch(warm_record["EndTime"])
    tasks = jobs(train["id"])
    assert sorted(t["ArrayTaskId"] for t in tasks) == FOLDS
    for task, log, fold in zip(sorted(tasks, key=lambda t: t["ArrayTaskId"]), train["logs"], FOLDS, strict=True):
        assert task["JobState"] == "COMPLETED", Path(log).read_text()[-3000:]
        assert epoch(task["StartTime"]) >= warm_end, (task["StartTime"], warm_record["EndTime"])
        summary = json.loads(Path(log).with_suffix(".json").read_text())
        assert summary["exit_code"] == 0 and f"2d {fold} " in " ".join(summary["command"]) + " "
        assert summary["fx_hit"] > 0 and summary["fx_miss"] == 0 and summary["aot_miss"] == 0, summary
    fx_entries = [p for p in (cache / "inductor").rglob("*") if p.is_file() and "fxgraph" in p.parts]
    assert fx_entries
    # SLURM's times have whole seconds: an entry written in the warm's last second is not newer than its end.
    assert [p for p in fx_entries if p.stat().st_mtime >= warm_end + 1] == []


def test_each_configuration_waits_only_for_its_own_warm_which_ends_in_seconds_when_warm(chain, planned):
    """A second submit, of 2d (warm since the cold chain) and 3d_fullres (cold), every job queued held: each
    array's dependency names its own configuration's warm job alone. With the 3d_fullres warm still held, the 2d
    warm ends in seconds and the 2d fold trains, missing nothing."""
    cache, jobs_dir, _ = chain
    out = submitted(cli("submit", "-d", "990", "-c", "2d", "3d_fullres", "-f", "0", "-tr", CPU_TRAINER, "--device",
                        "cpu", "--cache-dir", str(cache), "--jobs-dir", str(jobs_dir), "--sbatch-arg=--hold",
                        "--json", env=job_env(planned)))
    job = {(j["kind"], j["configurations"][0]): j for j in out["jobs"]}
    assert [(j["kind"], j["configurations"]) for j in out["jobs"]] == [
        ("warm", ["2d"]), ("train", ["2d"]), ("warm", ["3d_fullres"]), ("train", ["3d_fullres"])]
    try:
        for configuration in ("2d", "3d_fullres"):
            warm_id = job["warm", configuration]["id"]
            assert job["train", configuration]["depends_on"] == warm_id
            assert {t["Dependency"] for t in jobs(job["train", configuration]["id"])} == {
                f"afterok:{warm_id}(unfulfilled)"}
        released = [job["warm", "2d"]["id"], job["train", "2d"]["id"], job["train", "3d_fullres"]["id"]]
        subprocess.run(["scontrol", "release", *released], check=True)
        wait_until_done(released[:2], timeout=600)
        (warm_record,) = jobs(job["warm", "2d"]["id"])
        log = Path(job["warm", "2d"]["logs"][0]).read_text()
        assert warm_record["JobState"] == "COMPLETED", log[-3000:]
        assert "every target is warm; nothing to compile" in log and "warming" not in log, log
        assert epoch(warm_record["EndTime"]) - epoch(warm_record["StartTime"]) <= 30, warm_record
        (fold,) = jobs(job["train", "2d"]["id"])
        train_log = Path(job["train", "2d"]["logs"][0])
        assert fold["JobState"] == "COMPLETED", train_log.read_text()[-3000:]
        summary = json.loads(train_log.with_suffix(".json").read_text())
        assert summary["exit_code"] == 0 and summary["fx_miss"] == summary["aot_miss"] == 0, summary
        held = [job["warm", "3d_fullres"]["id"], job["train", "3d_fullres"]["id"]]
        assert {record["JobState"] for job_id in held for record in jobs(job_id)} == {"PENDING"}
    finally:
        subprocess.run(["scancel", *(j["id"] for j in out["jobs"])], check=False)


def test_failed_warm_cancels_the_trainings(slurm, planned, tmp_path):
    out = submitted(submit(planned, tmp_path / "jobs", tmp_path / "cache", "--json",
                           trainer="nnUNetTrainerTestFailsOnNode"))
    warm, train = out["jobs"]
    wait_until_done([warm["id"], train["id"]], timeout=600)
    (record,) = jobs(warm["id"])
    assert record["JobState"] == "FAILED", record
    assert "simulated node failure" in Path(warm["logs"][0]).read_text()
    for task in jobs(train["id"]):
        assert (task["JobState"], task["Reason"]) == ("CANCELLED", "DependencyNeverSatisfied"), task
    assert not any(Path(log).exists() for log in train["logs"])


def test_a_node_type_that_cannot_compile_fails_its_warm_or_trains_eager_on_request(slurm, planned, tmp_path):
    env = job_env(planned, **without_compilers(tmp_path / "bin"), nnUNet_results=str(tmp_path / "results"))
    refused = submitted(submit(planned, tmp_path / "jobs", tmp_path / "cache", "--json", env=env))
    eager = submitted(submit(planned, tmp_path / "jobs-eager", tmp_path / "cache-eager", "--json",
                             "--eager-if-cannot-compile", env=env))
    wait_until_done([j["id"] for j in refused["jobs"] + eager["jobs"]], timeout=900)

    warm, train = refused["jobs"]
    (record,) = jobs(warm["id"])
    last = Path(warm["logs"][0]).read_text().strip().splitlines()[-1]
    assert record["JobState"] == "FAILED" and "cannot compile: no working C/C++ compiler" in last, (record, last)
    for task in jobs(train["id"]):
        assert (task["JobState"], task["Reason"]) == ("CANCELLED", "DependencyNeverSatisfied"), task

    warm, train = eager["jobs"]
    (record,) = jobs(warm["id"])
    log = Path(warm["logs"][0]).read_text()
    assert record["JobState"] == "COMPLETED", log[-3000:]
    assert "cannot compile: no working C/C++ compiler" in log
    assert log.strip().splitlines()[-1].endswith("its training runs eager (--eager-if-cannot-compile)"), log[-3000:]
    for task, log_file in zip(sorted(jobs(train["id"]), key=lambda t: t["ArrayTaskId"]), train["logs"], strict=True):
        assert task["JobState"] == "COMPLETED", Path(log_file).read_text()[-3000:]
        assert epoch(task["StartTime"]) >= epoch(record["EndTime"])
        assert "running this job eager (nnUNet_compile=f)" in Path(log_file).read_text()
        summary = json.loads(Path(log_file).with_suffix(".json").read_text())
        assert summary["exit_code"] == 0 and summary["fx_hit"] == summary["fx_miss"] == 0, summary
        assert summary["compile_seconds"] == 0, summary


def test_each_gpu_type_gets_its_own_warm_job_and_trainings(slurm, planned, tmp_path):
    out = submitted(submit(planned, tmp_path / "jobs", tmp_path / "cache", "--json", "--gpu-type", "typeA",
                           "typeB", "--sbatch-arg=--hold"))
    ids = [j["id"] for j in out["jobs"]]
    try:
        by_kind = {(j["kind"], j["gpu_type"]): j for j in out["jobs"]}
        assert set(by_kind) == {("warm", "typeA"), ("train", "typeA"), ("warm", "typeB"), ("train", "typeB")}
        for gpu_type in ("typeA", "typeB"):
            (warm,) = jobs(by_kind["warm", gpu_type]["id"])
            train = jobs(by_kind["train", gpu_type]["id"])
            assert warm["Features"] == gpu_type
            assert {t["Features"] for t in train} == {gpu_type}
            assert {t["Dependency"] for t in train} == {f"afterok:{warm['JobId']}(unfulfilled)"}
    finally:
        subprocess.run(["scancel", *ids], check=False)


def _refused(result: subprocess.CompletedProcess, jobs_dir: Path, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and result.stdout == "", result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert not jobs_dir.exists() or not any(jobs_dir.iterdir()), list(jobs_dir.iterdir())


def queue_of_this_user() -> list[str]:
    return subprocess.run(["squeue", "-h", "-u", str(os.getuid()), "-o", "%i"], capture_output=True,
                          text=True).stdout.split()


@pytest.mark.parametrize("case", ["no sbatch", "rejected option", "unknown configuration", "unknown GPU type"])
def test_bad_input_queues_nothing(slurm, planned, tmp_path, case):
    before = queue_of_this_user()
    jobs_dir = tmp_path / "jobs"
    if case == "no sbatch":
        result = submit(planned, jobs_dir, tmp_path / "cache", env={**job_env(planned), "PATH": str(BIN)})
        _refused(result, jobs_dir, "sbatch is not on PATH")
    elif case == "rejected option":
        result = submit(planned, jobs_dir, tmp_path / "cache", "--sbatch-arg=--partition=nosuch")
        _refused(result, jobs_dir, "sbatch refused the warm job", "partition", "nothing was queued")
    elif case == "unknown configuration":
        result = cli("submit", "-d", "990", "-c", "3d_nope", "-f", "0", "-tr", CPU_TRAINER, "--jobs-dir",
                     str(jobs_dir), env=job_env(planned))
        _refused(result, jobs_dir, "3d_nope")
    else:  # typeA's warm and training are queued before sbatch refuses typeZ: both must be cancelled again
        result = submit(planned, jobs_dir, tmp_path / "cache", "--gpu-type", "typeA", "typeZ")
        _refused(result, jobs_dir, "warm job on typeZ", "cancelled the 2 job(s) already queued", "nothing is queued")
        cancelled = re.search(r"already queued \(([\d ]+)\)", result.stderr).group(1).split()
        wait_until_done(cancelled, timeout=60)  # one may have started, and takes a moment to be killed
        assert {record["JobState"] for job_id in cancelled for record in jobs(job_id)} == {"CANCELLED"}
    assert set(queue_of_this_user()) <= set(before)


def test_dry_run_prints_scripts_and_writes_nothing(planned, tmp_path):
    env = {**job_env(planned), "PATH": str(BIN)}  # no sbatch needed
    result = cli("submit", "-d", "990", "-c", "2d", "3d_fullres", "-f", "0", "1", "2", "--cache-dir",
                 str(tmp_path / "cache"), "--jobs-dir", str(tmp_path / "jobs"), "--gpu-type", "a100",
                 "--gpu-type-arg=--gres=gpu:{type}:1", "--sbatch-arg=--time=24:00:00", "--dry-run", "--", "--npz",
                 env=env)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "jobs").exists() and not (tmp_path / "cache").exists()
    scripts = result.stdout.split("# ---- ")[1:]
    assert len(scripts) == 4  # per configuration, a warm job and its training array
    assert all("#SBATCH --gres=gpu:a100:1\n#SBATCH --time=24:00:00\n" in s for s in scripts)
    assert "--gres=gpu:1" not in result.stdout  # the typed gres is the GPU request
    for warm, configuration in ((scripts[0], "2d"), (scripts[2], "3d_fullres")):
        assert f"{BIN / 'nnunet-warmer'} status" in warm and f"{BIN / 'nnunet-warmer'} warm" in warm
        assert f"-c {configuration} -p" in warm and f"warm-a100-{configuration}.sh" in warm.split("\n", 1)[0]
    assert "#SBATCH --array=0,1,2" in scripts[1] and f"{BIN / 'nnUNetv2_train'} Dataset990_WarmerDemo 3d_fullres" \
        in scripts[3] and "-device cuda --npz" in scripts[3]
    for script in scripts:
        body = script.split("\n", 1)[1]
        assert subprocess.run(["bash", "-n"], input=body, text=True).returncode == 0, body
    assert shutil.which("bash")
