"""Checks that cost what changed (issue 27): the node-local index of hashes reads a closure file again only when
its identity changed or a day passed, a garbled or missing index costs a re-hash and never a false result, and
damage a stat cannot see is found by the next full re-hash and at once by `check`.

No compile: a cache of synthetic entries and a real manifest of them (as test_integrity's)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from warmer.cache.digests import FULL_REHASH_SECONDS, DigestIndex
from warmer.cache.files import file_identity
from warmer.cache.integrity import damaged_entries, manifest_damage
from warmer.cache.layout import CacheDir
from warmer.cache.manifest import Manifest, ManifestMemo, new_manifest
from warmer.values.results import ReplayResult
from warmer.values.targets import Target

ENTRIES = [f"inductor/fxgraph/ab/f{i:02d}/entry" for i in range(5)]


@pytest.fixture
def published(tmp_path: Path) -> tuple[CacheDir, Manifest, Path]:
    """A cache of five entries, a manifest that lists them, and a scratch folder for the index."""
    cache = CacheDir(tmp_path / "cache")
    for i, relative in enumerate(ENTRIES):
        (cache.root / relative).parent.mkdir(parents=True)
        (cache.root / relative).write_bytes(bytes([i]) * 4096)
    target = Target("Dataset990_WarmerDemo", "nnUNetPlans", "2d", "nnUNetTrainerCPUCompile_2it", "cpu", 10)
    manifest = new_manifest(cache, target, {"device": "cpu"}, "fp", None,
                            ReplayResult(True, {}, closure=tuple(ENTRIES)))
    (tmp_path / "scratch").mkdir()
    return cache, manifest.write(), tmp_path / "scratch"


def _check(cache: CacheDir, manifest: Manifest, scratch: Path) -> tuple[list[Path], int]:
    """What one check with the saved index finds, and how many files it read."""
    index = DigestIndex.open(cache, scratch)
    damaged = manifest_damage(cache, manifest, index)
    index.save()
    return damaged, index.hashed


def _garble_keeping_size_and_mtime(path: Path) -> None:
    info = path.stat()
    path.write_bytes(b"\xff" * info.st_size)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def test_an_unchanged_file_is_read_once_and_a_changed_one_again(published) -> None:
    cache, manifest, scratch = published
    assert _check(cache, manifest, scratch) == ([], len(ENTRIES))
    assert _check(cache, manifest, scratch) == ([], 0)  # a second process: the index is on disk
    grown, touched = cache.root / ENTRIES[0], cache.root / ENTRIES[1]
    grown.write_bytes(grown.read_bytes() + b"x")  # size changed
    os.utime(touched, ns=(0, touched.stat().st_mtime_ns + 10**9))  # mtime changed, same bytes
    damaged, hashed = _check(cache, manifest, scratch)
    assert damaged == [grown] and hashed == 2


def test_a_file_garbled_in_place_with_size_and_mtime_restored_is_found_by_the_next_check(published) -> None:
    """Its ctime changed (no user can set a ctime back), so the identity differs: found at once."""
    cache, manifest, scratch = published
    _check(cache, manifest, scratch)
    garbled = cache.root / ENTRIES[2]
    _garble_keeping_size_and_mtime(garbled)
    assert _check(cache, manifest, scratch) == ([garbled], 1)


def test_damage_a_stat_cannot_see_is_found_by_the_full_rehash_and_at_once_by_check(published, monkeypatch) -> None:
    """Bit rot keeps the whole identity: simulated by garbling a file and then recording its new identity in the
    index with the hash of its old bytes, as if the index had hashed it before the rot."""
    cache, manifest, scratch = published
    _check(cache, manifest, scratch)
    rotten = cache.root / ENTRIES[3]
    (index_file,) = (scratch / f"nnunet-warmer-{os.geteuid()}" / "digests").glob("*.json")
    index = json.loads(index_file.read_text())
    _garble_keeping_size_and_mtime(rotten)
    *_, hashed_at, good = index["files"][str(rotten)]
    index["files"][str(rotten)] = [*file_identity(rotten.stat()), hashed_at, good]
    index_file.write_text(json.dumps(index))
    assert _check(cache, manifest, scratch) == ([], 0)  # the documented window: unseen until the full re-hash
    assert {d.path for d in damaged_entries(cache)} == {rotten, manifest.path}  # `check` hashes everything
    later = time.time() + FULL_REHASH_SECONDS + 1
    monkeypatch.setattr("warmer.cache.digests.time.time", lambda: later)
    assert _check(cache, manifest, scratch) == ([rotten], len(ENTRIES))


@pytest.mark.parametrize("index_state", ["garbled", "missing", "another version", "wrong types"])
def test_a_garbled_or_missing_index_is_rebuilt_by_a_rehash_without_a_false_damaged(published, index_state) -> None:
    cache, manifest, scratch = published
    _check(cache, manifest, scratch)
    (path,) = (scratch / f"nnunet-warmer-{os.geteuid()}" / "digests").glob("*.json")
    if index_state == "missing":
        path.unlink()
    else:
        path.write_text({"garbled": '{"version": 1, "files": {"/x": [1, 2',
                         "another version": json.dumps({"version": 99, "files": {}}),
                         "wrong types": json.dumps({"version": 1, "files": {"/x": "not a list"}})}[index_state])
    assert _check(cache, manifest, scratch) == ([], len(ENTRIES))
    assert _check(cache, manifest, scratch) == ([], 0)
    assert len(json.loads(path.read_text())["files"]) == len(ENTRIES)


def test_an_index_folder_others_could_write_is_not_used(published) -> None:
    """Whoever can write the index can vouch for a file they planted: such a folder is left alone, and every
    check reads every file."""
    cache, manifest, scratch = published
    folder = scratch / f"nnunet-warmer-{os.geteuid()}" / "digests"
    folder.mkdir(parents=True)
    folder.chmod(0o777)
    assert _check(cache, manifest, scratch) == ([], len(ENTRIES))
    assert _check(cache, manifest, scratch) == ([], len(ENTRIES))
    assert not list(folder.iterdir())


def test_the_index_folders_are_private_whatever_the_umask(published) -> None:
    """The node-local copy lives beside the index and refuses a folder others can write: a group-shared umask
    must not make the first check leave one behind."""
    cache, manifest, scratch = published
    umask = os.umask(0o002)
    try:
        _check(cache, manifest, scratch)
    finally:
        os.umask(umask)
    mine = scratch / f"nnunet-warmer-{os.geteuid()}"
    assert [oct(p.stat().st_mode & 0o777) for p in (mine, mine / "digests")] == ["0o700", "0o700"]


def test_a_manifest_is_parsed_again_only_when_its_file_changed(published, monkeypatch) -> None:
    cache, manifest, _ = published
    memo, reads = ManifestMemo(), []
    original = Manifest.read.__func__
    monkeypatch.setattr(Manifest, "read", classmethod(lambda cls, path: reads.append(path) or original(cls, path)))
    folder = manifest.path.parent
    first, second = memo.read_folder(folder), memo.read_folder(folder)
    assert [m.entries for m in first] == [manifest.entries] and second == first
    assert reads == [manifest.path]
    manifest.write()  # republished: a new file by rename
    assert memo.read_folder(folder) == first and reads == [manifest.path] * 2
