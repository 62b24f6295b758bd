"""The cache is code: a cache dir others could write is refused (with an override), and the warmer's own
folders are group-shareable."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from warmer.cache.layout import CacheDir
from warmer.cache.trust import make_shared_root
from warmer.cli import main

from .helpers import CPU_TRAINER, target_args


def _cache_with_entry(tmp_path: Path) -> tuple[Path, Path]:
    cache = tmp_path / "cache"
    entry = cache / "inductor" / "fxgraph" / "ab" / "entry"
    entry.parent.mkdir(parents=True)
    entry.write_bytes(b"compiled code")
    return cache, entry


@pytest.mark.parametrize("command", ["env", "run", "status"])
def test_world_writable_entry_is_refused_unless_overridden(nnunet_env, tmp_path, capsys, command: str) -> None:
    cache, entry = _cache_with_entry(tmp_path)
    os.chmod(entry, 0o666)
    args = {"env": ["env"], "run": ["run"], "status": ["status", *target_args("2d")]}[command]
    tail = ["--", "true"] if command == "run" else []
    assert main([*args, "--cache-dir", str(cache), *tail]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{entry} is world-writable" in err and "--allow-untrusted-cache" in err
    expected = {"env": 0, "run": 0, "status": 1}[command]  # status: trusted now, and cold
    assert main([*args, "--cache-dir", str(cache), "--allow-untrusted-cache", *tail]) == expected


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_entry_of_a_stranger_is_refused_but_a_team_member_is_trusted(tmp_path, capsys) -> None:
    cache, entry = _cache_with_entry(tmp_path)
    stranger = 65534
    os.chown(entry, stranger, stranger)
    assert main(["env", "--cache-dir", str(cache)]) == 2
    assert "who is not you, root, or in a group of yours" in capsys.readouterr().err
    assert main(["env", "--cache-dir", str(cache), "--allow-untrusted-cache"]) == 0
    os.chown(entry, stranger, os.getegid())  # a teammate's entry in a group of ours
    assert main(["env", "--cache-dir", str(cache)]) == 0


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o2755), (0o002, 0o2775), (0o077, 0o2700)])
def test_a_new_cache_dir_is_setgid_and_respects_the_umask(tmp_path, umask: int, mode: int) -> None:
    cache = CacheDir(tmp_path / "team" / "cache")
    previous = os.umask(umask)
    try:
        make_shared_root(cache)
        cache.manifests.mkdir()  # as publish, torch and the locks make their folders later
    finally:
        os.umask(previous)
    for folder in (cache.root, cache.manifests):
        assert stat.S_IMODE(os.stat(folder).st_mode) == mode, folder
        assert os.stat(folder).st_gid == os.stat(cache.root).st_gid


def test_a_file_renamed_away_during_the_check_is_no_error(tmp_path: Path, monkeypatch) -> None:
    """Another node's writer renames its temp file between the walk listing it and the check looking at it."""
    from warmer.cache import trust

    cache, entry = _cache_with_entry(tmp_path)
    real_walk = os.walk

    def walk_listing_a_vanished_temp(top):  # as a walk that raced a writer's rename sees the folder
        for folder, dirs, files in real_walk(top):
            yield folder, dirs, [*files, ".entry.node-b.1234.tmp"] if Path(folder) == entry.parent else files

    monkeypatch.setattr(trust.os, "walk", walk_listing_a_vanished_temp)
    assert trust.untrusted_entries(cache) == []


def test_a_stale_handle_during_the_check_is_no_error(tmp_path: Path, monkeypatch) -> None:
    """On GlusterFS (and NFS) a file another node renamed away can read as ESTALE rather than ENOENT."""
    from warmer.cache import trust

    cache, entry = _cache_with_entry(tmp_path)
    real_lstat = os.lstat

    def lstat_of_a_replaced_file(path, *args, **kwargs):
        if Path(path) == entry:
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE), str(path))
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(trust.os, "lstat", lstat_of_a_replaced_file)
    assert trust.untrusted_entries(cache) == []


def test_a_cache_dir_made_by_another_warmer_at_the_same_moment_is_no_error(tmp_path: Path, monkeypatch) -> None:
    """Two warmers started at once on a new cache dir both find it missing; the second mkdir finds it made."""
    cache = CacheDir(tmp_path / "cache")
    cache.root.mkdir()
    monkeypatch.setattr(Path, "exists", lambda self: False if self == cache.root else os.path.exists(self))
    make_shared_root(cache)


# Trust per target (issue 29): a job on a node-local copy checks what it copies, not the whole cache.
# (the planted path, and whether a 2d job on a local copy loads it: its closure, its manifest, a folder above them,
# or another target's file)
PLANTED = [("closure", True), ("manifest", True), ("folder", True), ("root", True), ("outside", False)]


def _planted_path(cache: CacheDir, where: str) -> Path:
    from .test_local_copy import FILES

    return {"closure": cache.root / FILES["so"], "manifest": next(cache.manifests.rglob("*.json")),
            "folder": (cache.root / FILES["fx"]).parent.parent, "root": cache.root,
            "outside": cache.root / FILES["other"]}[where]


def _plant(path: Path, how: str) -> None:
    if how == "world-writable":
        os.chmod(path, os.lstat(path).st_mode | stat.S_IWOTH)
    else:
        os.chown(path, 65534, 65534)


@pytest.mark.parametrize("how", [
    "world-writable",
    pytest.param("stranger", marks=pytest.mark.skipif(os.geteuid() != 0, reason="giving files away needs root"))])
@pytest.mark.parametrize(("where", "loaded"), PLANTED)
def test_a_job_on_a_local_copy_checks_only_what_it_copies(tmp_path, capsys, where: str, loaded: bool,
                                                          how: str) -> None:
    from .test_local_copy import _fake_train, _run, _shared_cache

    cache = _shared_cache(tmp_path / "cache")
    planted = _planted_path(cache, where)
    _plant(planted, how)
    code = _run(cache, _fake_train(tmp_path / "bin"), tmp_path / "scratch", tmp_path / "run.json")
    err = capsys.readouterr().err
    if loaded:
        assert code == 2 and err.count("\n") == 1 and f"{planted} " in err and "--allow-untrusted-cache" in err, err
        assert not (tmp_path / "scratch").exists(), "nothing was copied"
    else:
        assert code == 0, err
        assert main(["check", "--cache-dir", str(cache.root)]) == 1
        assert f"untrusted  {planted} " in capsys.readouterr().out


@pytest.mark.parametrize("job", ["unknown target", "no manifest", "in place", "env without a target"])
def test_a_job_that_may_load_anything_checks_the_whole_cache(tmp_path, capsys, job: str) -> None:
    from .test_local_copy import _fake_train, _shared_cache

    cache = _shared_cache(tmp_path / "cache")
    outside = _planted_path(cache, "outside")
    _plant(outside, "world-writable")
    train = str(_fake_train(tmp_path / "bin"))
    argv = {"unknown target": ["run", "--", "true"],
            "no manifest": ["run", "--", train, "Dataset990_WarmerDemo", "3d_fullres", "0", "-tr", CPU_TRAINER],
            "in place": ["run", "--in-place", "--", train, "Dataset990_WarmerDemo", "2d", "0", "-tr", CPU_TRAINER],
            "env without a target": ["env"]}[job]
    assert main([argv[0], "--cache-dir", str(cache.root), "--scratch" if argv[0] == "run" else "--json",
                 *([str(tmp_path / "scratch")] if argv[0] == "run" else []), *argv[1:]]) == 2
    assert f"{outside} is world-writable" in capsys.readouterr().err


def test_status_and_env_of_a_target_check_its_closure_only(nnunet_env, tmp_path, capsys) -> None:
    from .test_local_copy import _shared_cache

    cache = _shared_cache(tmp_path / "cache")
    _plant(_planted_path(cache, "outside"), "world-writable")
    status = ["status", *target_args("2d", cache=cache.root)]
    env = ["env", "--cache-dir", str(cache.root), "-d", "990", "-c", "2d", "-tr", CPU_TRAINER, "--scratch",
           str(tmp_path / "scratch")]
    assert main(status) != 2 and main(env) == 0, capsys.readouterr().err
    _plant(_planted_path(cache, "closure"), "world-writable")
    assert main(status) == 2 and main(env) == 2
