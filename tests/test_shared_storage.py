"""The cache on a real network file system shared by nodes: GlusterFS (`.ci/gluster up`), two simulated nodes A and
B, each with its own FUSE mount (default caching options), hostname and /tmp (tests/nodes.py).

The datasets and the cache live on the volume, as a cluster keeps them; each node's nnUNet_results and scratch are
in its own /tmp. What the server holds is read from the brick, behind no client's cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from warmer.demo import CPU_TRAINERS_DIR

from .helpers import BIN, CPU_TRAINER, TEST_TRAINERS_DIR, target_args, train_command
from .nodes import BRICK, HOST_MOUNT, NODE_MOUNT, Node, gluster_up
from .test_fault_injection import CRASH_POINTS, CRASHING_WARMER, STAGES, Trial, Warm, _prepare

pytestmark = [pytest.mark.e2e, pytest.mark.gluster]
WARMER = str(BIN / "nnunet-warmer")
FAULT_TRIALS = 10
READ_ONLY_USER = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+dac_read_search",
                  "--ambient-caps=+dac_read_search"]  # reads everything, writes nothing it does not own


class Cluster:
    """Nodes A and B and a work folder on the volume: `host` is its path on this machine's mount, `node` on the
    nodes', `brick` on the server."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.host, self.node, self.brick = HOST_MOUNT / name, NODE_MOUNT / name, BRICK / name
        self.a, self.b = Node("A"), Node("B")

    def job_variables(self) -> dict[str, str]:
        """What a node's jobs see on top of ours: the dataset on the volume, results and scratch on the node's /tmp."""
        return {"nnUNet_raw": "/tmp/nnUNet_raw", "nnUNet_preprocessed": str(self.node / "preprocessed"),
                "nnUNet_results": "/tmp/nnUNet_results", "TMPDIR": "/tmp", "HOME": "/tmp",
                "nnUNet_extTrainer": os.pathsep.join([str(CPU_TRAINERS_DIR), str(TEST_TRAINERS_DIR)])}

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **self.job_variables(), **extra}

    def with_env(self, argv: list[str]) -> list[str]:
        """`argv` run through env(1) with the job variables, for what starts with our own environment."""
        return ["env", *(f"{k}={v}" for k, v in self.job_variables().items()), *argv]

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()


@pytest.fixture(scope="module")
def cluster(planned) -> Iterator[Cluster]:
    if not gluster_up():
        if os.environ.get("CI"):
            pytest.fail("no GlusterFS volume mounted on this machine: .ci/run starts one with .ci/gluster up")
        pytest.skip("no GlusterFS volume here: start one with `.ci/gluster up` (root; installs glusterfs-server)")
    cluster = Cluster(f"shared-storage-{os.getpid()}")
    cluster.host.mkdir()
    shutil.copytree(planned.preprocessed, cluster.host / "preprocessed")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.host, ignore_errors=True)


@pytest.fixture(scope="module")
def warmed_on_a(cluster) -> Path:
    """Dataset990 2d warmed cold on node A into `cache` on the volume (its path on the nodes)."""
    cache = cluster.node / "cache"
    result = cluster.a.run([WARMER, "warm", *target_args("2d", cache=cache), "--json"], cluster.env())
    assert result.returncode == 0, result.stderr[-3000:]
    (report,) = json.loads(result.stdout)["targets"]
    assert report["state"] == "warm" and report["cold"]["counters"]["fx_miss"] > 0, report
    return cache


def contents(folder: Path, skip: tuple[str, ...] = ("ledger",)) -> dict[str, str]:
    """Each file and folder under `folder` (but `skip`) with its mode and the SHA-256 of its bytes."""
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if relative.parts[0] in skip:
            continue
        info = path.lstat()
        found[str(relative)] = f"{info.st_mode:o} " + (hashlib.sha256(path.read_bytes()).hexdigest()
                                                         if path.is_file() else "")
    return found


def copy_of(cluster: Cluster, cache: Path, name: str) -> Path:
    """A copy of a cache on the volume (its path on the nodes), made through the host's mount."""
    shutil.copytree(cluster.host / cache.relative_to(cluster.node), cluster.host / name)
    return cluster.node / name


def train_on(node: Node, cluster: Cluster, cache: Path, summary: str, *prefix: str,
             results: str = "/tmp/nnUNet_results") -> dict:
    """A real nnUNetv2_train of 2d fold 0 under `run` on `node`, which must exit 0; its summary."""
    result = node.run([*prefix, WARMER, "run", "--cache-dir", str(cache), "--json", f"/tmp/{summary}", "--",
                       *train_command("990", "2d")], cluster.env(nnUNet_results=results))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((node.tmp / summary).read_text())


def test_warm_on_a_trains_on_b_without_a_miss_or_a_byte_written(cluster, warmed_on_a) -> None:
    brick = cluster.brick / warmed_on_a.name
    before = contents(brick)
    summary = train_on(cluster.b, cluster, warmed_on_a, "b.json")
    assert (summary["fx_miss"], summary["aot_miss"], summary["compiled_locally"]) == (0, 0, 0), summary
    assert summary["fx_hit"] > 0 and summary["local_copy"].startswith("/tmp/")
    assert contents(brick) == before, "node B changed the shared cache"


def test_a_user_who_may_only_read_the_cache_trains_on_b(cluster, warmed_on_a) -> None:
    (cluster.b.tmp / "nobody").mkdir()
    os.chown(cluster.b.tmp / "nobody", 65534, 65534)
    for folder, _, files in os.walk(cluster.host / "preprocessed"):  # the dataset is the user's: nnU-Net writes its
        for path in [Path(folder), *(Path(folder) / name for name in files)]:  # splits there; the cache is not
            os.chown(path, 65534, 65534)
    brick = cluster.brick / warmed_on_a.name
    before = contents(brick, skip=())
    summary = train_on(cluster.b, cluster, warmed_on_a, "nobody.json", *READ_ONLY_USER, results="/tmp/nobody")
    assert (summary["fx_miss"], summary["aot_miss"], summary["compiled_locally"]) == (0, 0, 0), summary
    assert contents(brick, skip=()) == before, "a read-only user changed the shared cache"


def test_gc_on_a_while_b_trains_from_its_local_copy(cluster, warmed_on_a) -> None:
    cache = copy_of(cluster, warmed_on_a, "cache-gc")
    job = cluster.b.popen([WARMER, "run", "--cache-dir", str(cache), "--json", "/tmp/gc.json", "--",
                           *train_command("990", "2d")], cluster.env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(job.stdout or []), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not any("node-local copy" in line for line in lines) and time.monotonic() < deadline:
        assert job.poll() is None, "".join(lines)[-3000:]
        time.sleep(0.2)
    gc = cluster.a.run([WARMER, "gc", "--cache-dir", str(cache), "--unused-for", "0", "--json"], cluster.env())
    assert gc.returncode == 0, gc.stderr
    assert [d["label"] for d in json.loads(gc.stdout)["dropped"]] == [
        f"Dataset990_WarmerDemo/nnUNetPlans/2d/{CPU_TRAINER}"]
    assert not list((cluster.brick / cache.name / "manifests").rglob("*.json"))
    assert job.wait(timeout=900) == 0, "".join(lines)[-3000:]
    reader.join(timeout=10)
    summary = json.loads((cluster.b.tmp / "gc.json").read_text())
    assert (summary["fx_miss"], summary["aot_miss"], summary["compiled_locally"]) == (0, 0, 0), summary


def test_jobs_on_b_start_cleanly_while_a_republishes_again_and_again(cluster, warmed_on_a) -> None:
    """Node A replaces every file of the target's closure and its manifest (same bytes, new files: what a re-warm
    does) round after round, while jobs start on node B, each staging a fresh copy: B's client caches never make
    it reject (and so skip) a good file, and no job fails; a real training in the middle misses nothing."""
    cache = copy_of(cluster, warmed_on_a, "cache-churn")
    (manifest,) = (cluster.host / cache.name / "manifests").rglob("*.json")
    closure = [*json.loads(manifest.read_text())["entries"], str(manifest.relative_to(cluster.host / cache.name))]
    churn = cluster.a.popen([sys.executable, "-c", REPUBLISH, str(cache), *closure], cluster.env(),
                            stderr=subprocess.PIPE, text=True)
    try:
        fake = cluster.host / "bin" / "nnUNetv2_train"  # `run` reads the target off a train command's arguments
        fake.parent.mkdir(exist_ok=True)
        fake.write_text("#!/bin/sh\nexit 0\n")
        fake.chmod(0o755)
        starts = []
        for round_ in range(12):
            result = cluster.b.run([WARMER, "run", "--scratch", f"/tmp/churn-{round_}", "--cache-dir", str(cache),
                                    "--", str(cluster.node / "bin" / "nnUNetv2_train"), "990", "2d", "0", "-tr",
                                    CPU_TRAINER, "-device", "cpu"], cluster.env())
            starts.append(result)
            assert result.returncode == 0, result.stderr[-3000:]
            assert "did not match" not in result.stderr and "does not parse" not in result.stderr, result.stderr
            assert f"{len(closure) - 1} files" in result.stderr, result.stderr
        summary = train_on(cluster.b, cluster, cache, "churn.json")
        assert (summary["fx_miss"], summary["aot_miss"], summary["compiled_locally"]) == (0, 0, 0), summary
        assert churn.poll() is None, churn.communicate()[1]
    finally:
        churn.send_signal(signal.SIGTERM)
        churn.wait(timeout=30)
    assert not (cluster.brick / cache.name / "quarantine").exists()


# node A's republisher: every file of the closure written again beside itself and renamed over it, round after round
REPUBLISH = """
import os, sys, time
root, files = sys.argv[1], sys.argv[2:]
rounds = 0
while True:
    for relative in files:
        path = os.path.join(root, relative)
        with open(path, "rb") as f:
            data = f.read()
        with open(path + ".republish.tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".republish.tmp", path)
    rounds += 1
    time.sleep(0.2)
"""


def test_two_warmers_of_one_target_on_a_and_b_compile_it_once(cluster) -> None:
    cache = cluster.node / "cache-two"
    command = [WARMER, "warm", *target_args("3d_fullres", cache=cache), "--json"]
    processes = [node.popen(command, cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for node in (cluster.a, cluster.b)]
    outputs = [p.communicate(timeout=1200) for p in processes]
    for node, process, (_, err) in zip("AB", processes, outputs, strict=True):
        if process.returncode:
            print(f"node {node}'s warm exited {process.returncode}:\n{err[-6000:]}")
    assert [p.returncode for p in processes] == [0, 0]
    reports = [json.loads(out)["targets"][0] for out, _ in outputs]
    assert sorted(r["state"] for r in reports) == ["already-warm", "warm"], reports
    for report in reports:
        assert report["verify"]["counters"]["fx_miss"] == 0 and report["verify"]["counters"]["aot_miss"] == 0


def test_watch_on_a_and_b_compiles_each_target_once(cluster) -> None:
    cache = cluster.node / "cache-watch"
    command = [WARMER, "watch", "-d", "990", "-c", "2d", "-tr", CPU_TRAINER, "--device", "cpu", "--cache-dir",
               str(cache), "--interval", "1"]
    watchers = [node.popen(command, cluster.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for node in (cluster.a, cluster.b)]
    logs: list[list[str]] = [[], []]
    readers = [threading.Thread(target=lambda w=w, log=log: log.extend(w.stderr), daemon=True)
               for w, log in zip(watchers, logs, strict=True)]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + 900
    try:
        while not all(any("targets: 1 warm" in line for line in log) for log in logs):
            assert time.monotonic() < deadline, logs
            assert all(w.poll() is None for w in watchers), [(w.returncode, log) for w, log in zip(watchers, logs,
                                                                                                strict=True)]
            time.sleep(1)
    finally:
        for watcher in watchers:
            watcher.send_signal(signal.SIGTERM)
        for watcher in watchers:
            watcher.wait(timeout=60)
    for reader in readers:
        reader.join(timeout=10)
    compiled = [line for log in logs for line in log if ": warm: cold " in line]
    assert len(compiled) == 1, logs


def test_node_a_dies_at_random_points_and_b_never_trusts_a_false_warm(cluster, warmed_on_a) -> None:
    """Node A's warmer SIGKILLed at random points of its compile replay, its verify, a re-verify, and inside the
    manifest write; once, a whole node (C) crashes, FUSE client and all, while its warm holds the target's lock.
    After each, node B's `status` may say warm only if B's fresh verify then misses nothing, and B's next `warm`
    completes. WARMER_FAULT_SEED=N replays a run's random choices."""
    seed = int(os.environ.get("WARMER_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    cache = copy_of(cluster, warmed_on_a, "cache-faults")
    host_cache = cluster.host / cache.name
    warm = [WARMER, "warm", *target_args("2d", cache=cache)]

    def b_checks(where: str) -> tuple[bool, dict]:
        said_warm = cluster.b.run([WARMER, "status", *target_args("2d", cache=cache)], cluster.env()).returncode == 0
        follow = cluster.b.run([*warm, "--json"], cluster.env())
        assert follow.returncode == 0, f"{where}: B's warm failed: {follow.stderr[-2000:]}"
        outcome = json.loads(follow.stdout)["targets"][0]
        if said_warm:
            assert outcome["state"] == "already-warm", f"{where}: B's status said warm, but a fresh verify missed"
        assert (outcome["verify"]["counters"]["fx_miss"], outcome["verify"]["counters"]["aot_miss"]) == (0, 0), where
        return said_warm, outcome

    crashed = Node("C")
    try:
        _prepare(host_cache, "replay", rng)
        time.sleep(1.5)  # what the host's mount did, the nodes' clients see after their caches expire
        doomed = Warm(crashed.wrap(cluster.with_env(warm)))
        assert doomed.stage_started(": compile: ") is not None, doomed.lines[-5:]
        time.sleep(rng.uniform(0, 3))
        crashed.crash()
        doomed.finish()
        start = time.monotonic()
        said_warm, _ = b_checks(f"seed {seed}, node crash")
        assert not said_warm and time.monotonic() - start < 600
    finally:
        crashed.stop()

    trials: list[Trial] = []
    stage_seconds = {"replay": 10.0, "verify": 12.0, "re-verify": 12.0}
    kinds = ("replay", "verify", "manifest", "re-verify")
    for attempt in range(24):  # a warm that ends before its kill does not count
        if len(trials) == FAULT_TRIALS:
            break
        kind = kinds[attempt % len(kinds)]
        state = _prepare(host_cache, kind, rng)
        time.sleep(1.5)
        if kind == "manifest":
            point, fraction = rng.choice(CRASH_POINTS), rng.random()
            killed = Warm(cluster.a.wrap(cluster.with_env([sys.executable, str(CRASHING_WARMER), point,
                                                           str(fraction), *warm[1:]])))
            trial = Trial(kind, state, f"crash at {point}")
        else:
            killed = Warm(cluster.a.wrap(cluster.with_env(warm)))
            delay = rng.uniform(0, 0.9 * stage_seconds[kind])
            trial = Trial(kind, state, f"SIGKILL {delay:.1f} s into {kind}")
            if killed.stage_started(next(m for m, stage in STAGES.items() if stage == kind)) is not None:
                time.sleep(delay)
                killed.kill()
        code, trial.killed_in = killed.finish()
        where = f"seed {seed}, trial {len(trials) + 1}: {trial}"
        assert code in (-signal.SIGKILL, 0), where
        said_warm, outcome = b_checks(where)
        trial.status, trial.next_state = ("warm" if said_warm else "not warm"), outcome["state"]
        if code == -signal.SIGKILL:
            trials.append(trial)
    print(f"seed {seed}: " + "; ".join(f"{t.kind} ({t.how}, in {t.killed_in}): B {t.status}, then {t.next_state}"
                                        for t in trials))
    assert len(trials) >= FAULT_TRIALS, f"seed {seed}: only {len(trials)} warms were killed before they ended"
    # B keeps the temp file of a manifest write killed on A: it cannot tell whether A's writer lives, so it waits a
    # day (files.ABANDONED_AFTER_SECONDS). A's next warm sees its own writer is dead and removes it.
    left = list((host_cache / "manifests").rglob("*.tmp"))
    assert all(".A." in path.name for path in left), left
    assert cluster.a.run(warm, cluster.env()).returncode == 0
    assert not list((host_cache / "manifests").rglob("*.tmp"))
