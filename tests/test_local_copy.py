"""Jobs run from a node-local copy of their target's closure: checked while copied, shared by the user's jobs on
the node, and the shared cache is only read (a user who may only read it trains from it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from warmer.cache.layout import CacheDir
from warmer.cache.manifest import new_manifest
from warmer.cache.staging import local_copy_of
from warmer.cli import main
from warmer.values.fingerprint import software_fingerprint
from warmer.values.profiles import JobEnvironment
from warmer.values.results import ReplayResult
from warmer.values.targets import Target

from .helpers import BIN, CPU_TRAINER, job_env, train_command, warm_e2e_cache
from .test_bad_input_table import tree_hash

# `nobody`, able to read and search everything (this machine's Python lives under /root, mode 0700) and to write
# nothing it does not own: a training user with read access only
READ_ONLY_USER = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+dac_read_search",
                  "--ambient-caps=+dac_read_search"]
FILES = {"fx": "inductor/fxgraph/ab/fabcdef/entry", "so": "inductor/xy/cxyz.so", "py": "inductor/xy/cxyz.py",
         "other": "inductor/zz/czz.py"}


def _shared_cache(root: Path) -> CacheDir:
    """A cache with one 2d target whose closure is fx, so and py, verified with this host's releases."""
    cache = CacheDir(root)
    for index, relative in enumerate(FILES.values()):
        (cache.root / relative).parent.mkdir(parents=True, exist_ok=True)
        (cache.root / relative).write_bytes(bytes(range(256)) * (index + 1) * 100)
    target = Target("Dataset990_WarmerDemo", "nnUNetPlans", "2d", CPU_TRAINER, "cpu", 10)
    fingerprint = {**software_fingerprint(JobEnvironment.with_profile("default")), "device": "cpu"}
    new_manifest(cache, target, fingerprint, "fp", None,
                 ReplayResult(True, {}, closure=(FILES["fx"], FILES["so"], FILES["py"]))).write()
    return cache


def _contents(root: Path) -> dict[str, tuple[int, bytes]]:
    """Each path under `root` but the ledger (a job appends its line there), with its mode and content."""
    return {str(p.relative_to(root)): (p.lstat().st_mode, p.read_bytes() if p.is_file() else b"")
            for p in sorted(root.rglob("*")) if p.relative_to(root).parts[0] != "ledger"}


def _fake_train(folder: Path) -> Path:
    """Stands in for nnUNetv2_train (`run` reads the target off its arguments): prints the cache dir it was given,
    and writes a file there, as a compile of a miss would."""
    train = folder / "nnUNetv2_train"
    train.parent.mkdir(parents=True, exist_ok=True)
    train.write_text('#!/bin/sh\necho "$TORCHINDUCTOR_CACHE_DIR"\nmkdir -p "$TORCHINDUCTOR_CACHE_DIR/new" && '
                     'echo compiled > "$TORCHINDUCTOR_CACHE_DIR/new/kernel.py"\n')
    train.chmod(0o755)
    return train


def _run(cache: CacheDir, train: Path, scratch: Path, summary: Path) -> int:
    return main(["run", "--cache-dir", str(cache.root), "--scratch", str(scratch), "--json", str(summary), "--",
                 str(train), "Dataset990_WarmerDemo", "2d", "0", "-tr", CPU_TRAINER, "-device", "cpu"])


def test_a_job_runs_on_a_checked_local_copy_of_its_closure_and_writes_nothing_shared(tmp_path, capfd) -> None:
    cache = _shared_cache(tmp_path / "cache")
    garbled = cache.root / FILES["py"]
    garbled.write_bytes(b"\x1b" + garbled.read_bytes()[1:])
    before = _contents(cache.root)
    train, scratch = _fake_train(tmp_path / "bin"), tmp_path / "scratch"
    assert _run(cache, train, scratch, tmp_path / "run.json") == 0
    out, err = capfd.readouterr()
    local = local_copy_of(cache, scratch)
    assert out.strip() == str(local.inductor)
    assert "2 files (0.1 MB) copied and checked" in err
    assert f"1 files did not match their manifest's checksum and were not copied (first: {FILES['py']})" in err
    assert "this job compiled 1 files into its node-local copy" in err
    for name in ("fx", "so"):
        assert (local.root / FILES[name]).read_bytes() == (cache.root / FILES[name]).read_bytes()
    assert not (local.root / FILES["py"]).exists() and not (local.root / FILES["other"]).exists()
    assert _contents(cache.root) == before
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["local_copy"] == str(local.root) and summary["compiled_locally"] == 1
    assert (os.stat(local.root.parent).st_mode & 0o777) == 0o700


def test_the_next_job_of_the_target_reuses_the_copy_and_takes_what_changed(tmp_path, capsys) -> None:
    cache = _shared_cache(tmp_path / "cache")
    train, scratch = _fake_train(tmp_path / "bin"), tmp_path / "scratch"
    assert _run(cache, train, scratch, tmp_path / "1.json") == 0
    assert "3 files (0.2 MB) copied and checked" in capsys.readouterr().err
    assert _run(cache, train, scratch, tmp_path / "2.json") == 0
    assert "0 files (0.0 MB) copied and checked" in capsys.readouterr().err
    local = local_copy_of(cache, scratch)
    (local.root / FILES["so"]).write_bytes(b"changed locally")  # a copy that changed is copied again
    assert _run(cache, train, scratch, tmp_path / "3.json") == 0
    err = capsys.readouterr().err
    assert "1 files" in err and "2 already there" in err
    assert (local.root / FILES["so"]).read_bytes() == (cache.root / FILES["so"]).read_bytes()


def test_concurrent_jobs_of_a_target_on_a_node_share_one_copy(tmp_path) -> None:
    """Folds started at once on one node: each job waits for the other's staging and finds the files there."""
    cache = _shared_cache(tmp_path / "cache")
    train, scratch = _fake_train(tmp_path / "bin"), tmp_path / "scratch"
    jobs = [subprocess.Popen([str(BIN / "nnunet-warmer"), "run", "--cache-dir", str(cache.root), "--scratch",
                              str(scratch), "--", str(train), "Dataset990_WarmerDemo", "2d", str(fold), "-tr",
                              CPU_TRAINER, "-device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for fold in range(4)]
    outputs = [job.communicate(timeout=300) for job in jobs]
    assert [job.returncode for job in jobs] == [0] * 4, [err for _, err in outputs]
    copied = sorted(int(err.split(": ", 2)[2].split(" files")[0]) for _, err in outputs)
    assert copied == [0, 0, 0, 3], [err for _, err in outputs]  # one job copied, the others found the files
    local = local_copy_of(cache, scratch)
    for name in ("fx", "so", "py"):
        assert (local.root / FILES[name]).read_bytes() == (cache.root / FILES[name]).read_bytes()

def test_a_scratch_folder_someone_else_could_write_is_refused(tmp_path, capsys) -> None:
    cache = _shared_cache(tmp_path / "cache")
    scratch = tmp_path / "scratch"
    planted = local_copy_of(cache, scratch).root.parent
    planted.mkdir(parents=True)
    planted.chmod(0o777)
    assert _run(cache, _fake_train(tmp_path / "bin"), scratch, tmp_path / "run.json") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a private folder of this user" in err[0]


def test_in_place_on_a_cache_this_user_cannot_write_is_one_line_naming_the_fix(tmp_path, capsys,
                                                                                monkeypatch) -> None:
    cache = _shared_cache(tmp_path / "cache")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert main(["run", "--in-place", "--cache-dir", str(cache.root), "--", str(_fake_train(tmp_path / "bin")),
                 "Dataset990_WarmerDemo", "2d", "0", "-tr", CPU_TRAINER, "-device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"this user cannot write {cache.root}" in err[0] and "without --in-place" in err[0]



def test_a_command_that_fails_on_a_cache_it_cannot_write_is_told_why(tmp_path, capsys, monkeypatch) -> None:
    """Not an nnU-Net command, so it runs in place: when it fails there, the line names the folder and the fix, and
    does not send the user to diff cache keys."""
    cache = _shared_cache(tmp_path / "cache")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert main(["run", "--cache-dir", str(cache.root), "--", "sh", "-c", "exit 1"]) == 1
    err = capsys.readouterr().err
    assert f"nnunet-warmer: this user cannot write {cache.root}" in err and "diff" not in err


def test_env_for_a_named_target_exports_its_local_copy(tmp_path, capsys, monkeypatch) -> None:
    cache = _shared_cache(tmp_path / "cache")
    (tmp_path / "preprocessed" / "Dataset990_WarmerDemo").mkdir(parents=True)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    scratch = tmp_path / "scratch"
    assert main(["env", "--cache-dir", str(cache.root), "-d", "990", "-c", "2d", "-tr", CPU_TRAINER, "--scratch",
                 str(scratch), "--json"]) == 0
    out, err = capsys.readouterr()
    local = local_copy_of(cache, scratch)
    assert json.loads(out)["TORCHINDUCTOR_CACHE_DIR"] == str(local.inductor.absolute())
    assert "3 files (0.2 MB) copied and checked" in err
    assert (local.root / FILES["fx"]).read_bytes() == (cache.root / FILES["fx"]).read_bytes()
    assert main(["env", "--cache-dir", str(cache.root), "-d", "990"]) == 2
    assert "-d and -c go together" in capsys.readouterr().err

@pytest.mark.e2e
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to be nobody")
def test_a_user_who_may_only_read_the_cache_trains_warm_from_a_local_copy(planned, e2e_cache) -> None:
    """A real nnUNetv2_train by `nobody` on root's warm cache (read access only): exit 0, 0 FX and 0 AOT misses,
    no kernel built, and not one byte of the shared cache changed (the ledger line is skipped with a warning)."""
    warm_e2e_cache(planned, e2e_cache, ["2d"])
    shared = Path(tempfile.mkdtemp(prefix="nnunet-warmer-readonly-"))  # pytest's tmp_path is private to root
    try:
        shutil.copytree(e2e_cache[0], shared / "cache")
        shutil.copytree(planned.preprocessed, shared / "preprocessed")
        (shared / "results").mkdir()
        for folder, _, files in os.walk(shared):
            os.chown(folder, 0, 0)
            os.chmod(folder, 0o755)
            for name in files:
                os.chown(Path(folder) / name, 0, 0)
                os.chmod(Path(folder) / name, 0o644)
        for folder, _, files in os.walk(shared / "preprocessed"):  # the dataset is the user's (nnU-Net writes its
            for path in [Path(folder), *(Path(folder) / name for name in files)]:  # splits there); the cache is not
                os.chown(path, 65534, 65534)
        os.chown(shared / "results", 65534, 65534)
        before = tree_hash(shared / "cache")
        env = {**os.environ, **job_env(planned), "nnUNet_preprocessed": str(shared / "preprocessed"),
               "nnUNet_results": str(shared / "results"), "HOME": str(shared / "results")}
        summary_file = shared / "results" / "run.json"
        result = subprocess.run([*READ_ONLY_USER, str(BIN / "nnunet-warmer"), "run", "--cache-dir",
                                 str(shared / "cache"), "--json", str(summary_file), "--",
                                 *train_command("990", "2d")],
                                capture_output=True, text=True, timeout=1800, cwd=shared / "results", env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads(summary_file.read_text())
        assert (summary["fx_miss"], summary["aot_miss"], summary["fx_hit"] > 0) == (0, 0, True), summary
        assert summary["compiled_locally"] == 0, "the job built or wrote cache files of its own"
        assert "ledger not written" in result.stderr
        assert tree_hash(shared / "cache") == before
    finally:
        shutil.rmtree(shared)
