"""`gc` on real warmed caches: what it drops and in which order, what `du` says afterwards, and that warms and
training jobs running meanwhile come to no harm (no false warm, no crash)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from warmer.cache.layout import CacheDir
from warmer.cache.locking import LockPolicy, publish_lock
from warmer.errors import UserError
from warmer.ledger import records

from .helpers import BIN, CPU_TRAINER, cli, job_env, run_under_warmer, target_args, train_command, warm_e2e_cache
from .test_bad_input_table import tree_hash

pytestmark = pytest.mark.e2e
CUSTOM_TRAINER = "nnUNetTrainerTestCustom"
TWIN_TRAINER = "nnUNetTrainerTestTwin"
DAY = 86400


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def label(configuration: str, trainer: str = CPU_TRAINER) -> str:
    return f"Dataset990_WarmerDemo/nnUNetPlans/{configuration}/{trainer}"


def use(cache: Path, configuration: str, trainer: str, when: float) -> None:
    """A ledger record as `run` writes it after a job of that target, dated `when`."""
    records.append(CacheDir(cache), {"kind": "run", "time": when, "dataset": "Dataset990_WarmerDemo",
                                     "plans": "nnUNetPlans", "configuration": configuration, "trainer": trainer,
                                     "gpu_name": ""})


def gc(cache: Path, *options: str) -> tuple[int, dict]:
    result = cli("gc", "--cache-dir", str(cache), "--json", *options)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.fixture(scope="module")
def three_targets(planned, e2e_cache, tmp_path_factory) -> Path:
    """A cache with three targets and no ledger: Dataset990 2d and 3d_fullres on the CPU test trainer (from the
    session's end-to-end cache) and 2d on the custom test trainer (other graphs, so a closure of its own)."""
    warm_e2e_cache(planned, e2e_cache, ["2d", "3d_fullres"])
    cache = tmp_path_factory.mktemp("gc") / "cache"
    shutil.copytree(e2e_cache[0], cache)
    shutil.rmtree(cache / "ledger", ignore_errors=True)
    keep = {label("2d"), label("3d_fullres")}
    for manifest in (cache / "manifests").rglob("*.json"):
        if str(manifest.parent.relative_to(cache / "manifests")) not in keep:
            manifest.unlink()
    result = cli("warm", *target_args("2d", trainer=CUSTOM_TRAINER, cache=cache), env=job_env(planned))
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.rmtree(cache / "ledger")
    return cache


def copy_of(cache: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    return copy


def test_max_size_drops_never_used_then_least_recently_used(planned, three_targets, tmp_path) -> None:
    cache = copy_of(three_targets, tmp_path)
    use(cache, "2d", CPU_TRAINER, time.time())
    use(cache, "3d_fullres", CPU_TRAINER, time.time() - 10 * DAY)
    listing = json.loads(cli("ls", "--cache-dir", str(cache), "--json", env=job_env(planned)).stdout)
    own = {t["label"]: t["closure_bytes"] - t["shared_bytes"] for t in listing["targets"]}
    assert len(own) == 3 and all(size > 0 for size in own.values()), own
    before = du(cache)
    limit = before - own[label("2d", CUSTOM_TRAINER)] - own[label("3d_fullres")] // 2

    code, result = gc(cache, "--max-size", str(limit))

    assert code == 0 and result["fits"], result
    assert [(d["label"], d["reason"]) for d in result["dropped"]] == [(label("2d", CUSTOM_TRAINER), "size"),
                                                                      (label("3d_fullres"), "size")]
    assert [t["label"] for t in result["kept"]] == [label("2d")]
    after = du(cache)
    assert after <= limit and result["cache_bytes_after"] == after and result["cache_bytes"] == before
    assert result["freed_bytes"] == before - after
    assert [p.parent.name for p in (cache / "manifests").rglob("*.json")] == [CPU_TRAINER]
    assert cli("check", "--cache-dir", str(cache)).returncode == 0
    env = {**job_env(planned), "nnUNet_results": str(tmp_path / "results")}
    _, summary = run_under_warmer(cache, tmp_path / "run.json", train_command("990", "2d"), env)
    assert summary["fx_miss"] == 0 and summary["aot_miss"] == 0 and summary["fx_hit"] > 0, summary


def test_dry_run_changes_nothing_and_ls_lists_every_manifest(planned, three_targets, tmp_path) -> None:
    cache = copy_of(three_targets, tmp_path)
    listing = json.loads(cli("ls", "--cache-dir", str(cache), "--json", env=job_env(planned)).stdout)
    assert sorted(t["manifest"] for t in listing["targets"]) == \
        sorted(str(p) for p in (cache / "manifests").rglob("*.json"))
    assert len(listing["targets"]) == 3
    before = tree_hash(cache)
    code, plan = gc(cache, "--max-size", "1", "--unused-for", "0", "--dry-run")
    assert code == 1 and plan["dry_run"] and not plan["fits"] and len(plan["dropped"]) == 3, plan
    text = cli("gc", "--cache-dir", str(cache), "--unused-for", "0", "--dry-run")
    assert text.returncode == 0 and text.stdout.count("would drop") == 3 and "nothing was changed" in text.stdout
    assert tree_hash(cache) == before


def test_two_gc_at_once_drop_each_target_once(three_targets, tmp_path) -> None:
    cache = copy_of(three_targets, tmp_path)
    before = du(cache)
    runs = [subprocess.Popen([str(BIN / "nnunet-warmer"), "gc", "--cache-dir", str(cache), "--unused-for", "0",
                              "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    results = [json.loads(out) for out, _ in outputs]
    dropped = sorted(d["label"] for result in results for d in result["dropped"])
    assert dropped == sorted([label("2d"), label("3d_fullres"), label("2d", CUSTOM_TRAINER)])
    assert sum(result["freed_bytes"] for result in results) == before - du(cache)
    assert not list((cache / "manifests").rglob("*.json"))
    assert cli("check", "--cache-dir", str(cache)).returncode == 0


def test_litter_goes_after_its_grace_period_and_young_files_stay(concurrently_warmed, tmp_path) -> None:
    cache = copy_of(concurrently_warmed[0], tmp_path)
    old = time.time() - 2 * DAY
    files = {"stray_old": cache / "inductor/fxgraph/zz/fzz/old-entry", "stray_young": cache / "inductor/zz/young.py",
             "torch_temp": cache / "inductor/zz/.123.456.tmp", "quarantined": cache / "quarantine/20200101T000000/x",
             "quarantined_recently": cache / f"quarantine/{time.strftime('%Y%m%dT%H%M%S')}/y",
             "dead_writer": cache / "manifests/Dataset990_WarmerDemo/.1.json.{host}.999999999.tmp"}
    files["dead_writer"] = files["dead_writer"].with_name(files["dead_writer"].name.format(host=os.uname().nodename))
    for name, path in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 100)
        if name != "stray_young":
            os.utime(path, (old, old))
    empty = cache / "inductor/empty/folder"
    empty.mkdir(parents=True)
    os.utime(empty, (old, old))
    code, result = gc(cache)
    assert code == 0 and result["dropped"] == [] and len(result["kept"]) == 1, result
    gone = {name for name, path in files.items() if not path.exists()}
    assert gone == {"stray_old", "torch_temp", "quarantined", "dead_writer"}, gone
    assert not empty.exists() and empty.parent.exists()  # its parent was not empty when gc looked
    assert result["litter"]["stray_entries"] == 1 and result["young_unlisted_bytes"] == 100
    assert cli("check", "--cache-dir", str(cache)).returncode == 0


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "local-copy"])
def test_gc_during_real_training_of_a_target_it_drops(planned, concurrently_warmed, tmp_path, in_place) -> None:
    """The job's files go while it starts. In place, it compiles what it misses and exits 0; on its node-local
    copy (made before nnU-Net starts), it misses nothing."""
    cache = copy_of(concurrently_warmed[0], tmp_path)
    env = {**os.environ, **job_env(planned), "nnUNet_results": str(tmp_path / "results")}
    summary_file = tmp_path / "run.json"
    where = ["--in-place"] if in_place else ["--scratch", str(tmp_path / "scratch")]
    job = subprocess.Popen([str(BIN / "nnunet-warmer"), "run", *where, "--cache-dir", str(cache), "--json",
                            str(summary_file), "--", *train_command("990", "2d")], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(job.stdout or []), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not any("Using" in line or "####" in line for line in lines) and time.monotonic() < deadline:
        assert job.poll() is None, "".join(lines)[-3000:]
        time.sleep(0.2)
    code, result = gc(cache, "--unused-for", "0")
    assert code == 0 and [d["label"] for d in result["dropped"]] == [label("2d")], result
    assert job.wait(timeout=900) == 0, "".join(lines)[-3000:]
    reader.join(timeout=10)
    summary = json.loads(summary_file.read_text())
    print(f"training during gc: freed {result['freed_bytes']} B; the job: FX {summary['fx_hit']} hit / "
          f"{summary['fx_miss']} miss, AOT {summary['aot_hit']} hit / {summary['aot_miss']} miss")
    if in_place:
        assert summary["fx_miss"] > 0  # it compiled what gc deleted
    else:
        assert (summary["fx_miss"], summary["aot_miss"], summary["compiled_locally"]) == (0, 0, 0), summary
    assert cli("check", "--cache-dir", str(cache)).returncode == 0


def test_gc_while_a_warm_publishes_never_leaves_a_false_warm(planned, concurrently_warmed, tmp_path) -> None:
    """A twin target (same graphs) warms from the files of a target gc drops meanwhile: gc starts as the twin's
    compile replay (all hits from the other target's files) ends, so it races the twin's publish, and runs again
    and again until the warm ends. At no point may a manifest list a missing or altered file; at the end the twin
    is warm (its publish came first and kept the files, or it found them gone and compiled again)."""
    cache = copy_of(concurrently_warmed[0], tmp_path)
    use(cache, "2d", CPU_TRAINER, time.time() - 10 * DAY)
    env = {**os.environ, **job_env(planned)}
    warm = subprocess.Popen([str(BIN / "nnunet-warmer"), "warm", *target_args("2d", trainer=TWIN_TRAINER, cache=cache),
                             "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress: list[str] = []
    reader = threading.Thread(target=lambda: progress.extend(warm.stderr or []), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not any("compile: fresh_inference ..." in line for line in progress) and time.monotonic() < deadline:
        assert warm.poll() is None, "".join(progress)[-3000:]
        time.sleep(0.1)
    collections, dropped = 0, []
    while warm.poll() is None:
        code, result = gc(cache, "--unused-for", "5")
        collections += 1
        dropped += [d["label"] for d in result["dropped"]]
        check = json.loads(cli("check", "--cache-dir", str(cache), "--json").stdout)
        assert check["damaged"] == [], check
    out, _ = warm.communicate(timeout=60)
    reader.join(timeout=10)
    assert warm.returncode == 0, "".join(progress)[-3000:]
    print(f"{collections} gc runs during the warm; the warm said:\n" + "".join(progress)[-2000:])
    assert dropped == [label("2d")]
    assert json.loads(out)["targets"][0]["state"] == "warm"
    assert cli("check", "--cache-dir", str(cache)).returncode == 0
    status = cli("status", *target_args("2d", trainer=TWIN_TRAINER, cache=cache), env=job_env(planned))
    assert status.returncode == 0, status.stdout + status.stderr


def test_a_held_publish_lock_keeps_gc_waiting_until_its_timeout(concurrently_warmed, tmp_path) -> None:
    cache = CacheDir(copy_of(concurrently_warmed[0], tmp_path))
    policy = LockPolicy(wait_timeout=0.5)
    with publish_lock(cache.publish_lock, policy, print, exclusive=False), \
            publish_lock(cache.publish_lock, policy, print, exclusive=False):  # publishes run side by side
        result = cli("gc", "--cache-dir", str(cache.root), "--unused-for", "0", "--wait-timeout", "1")
        assert result.returncode == 2 and "lock wait timed out" in result.stderr, result.stderr
        assert len(list(cache.manifests.rglob("*.json"))) == 1
    with publish_lock(cache.publish_lock, policy, print, exclusive=True), pytest.raises(UserError):
        with publish_lock(cache.publish_lock, policy, print, exclusive=False):
            pass


def test_gc_of_a_missing_cache_or_a_bad_size_is_a_one_line_error(tmp_path) -> None:
    missing = cli("gc", "--cache-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    bad = cli("gc", "--cache-dir", str(tmp_path), "--max-size", "lots")
    assert bad.returncode == 2 and "not a size" in bad.stderr.strip().splitlines()[-1]
