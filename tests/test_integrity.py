"""`check` finds each kind of damaged cache file without compiling, and names the manifests that list it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from warmer.cache.files import ABANDONED_AFTER_SECONDS, remove_abandoned_temps
from warmer.cache.integrity import Damage, damaged_entries, quarantine
from warmer.cache.layout import CacheDir
from warmer.cache.manifest import Manifest, new_manifest
from warmer.cli import main
from warmer.values.results import ReplayResult
from warmer.values.targets import Target

from .helpers import BIN

ENTRIES = {
    "FX entry": "inductor/fxgraph/ab/fabcdef/entry",
    "AOT entry": "inductor/aotautograd/cd/aentry/entry",
    "kernel .so": "inductor/xy/cxyz.so",
    "generated code": "inductor/xy/cxyz.cpp",
    "Triton file": "inductor/triton/0/KEY/kernel.cubin",
}


@pytest.fixture
def published(tmp_path: Path) -> tuple[CacheDir, Path]:
    cache = CacheDir(tmp_path / "cache")
    for index, relative in enumerate(ENTRIES.values()):
        (cache.root / relative).parent.mkdir(parents=True, exist_ok=True)
        (cache.root / relative).write_bytes(bytes(range(256)) * (index + 1))
    (cache.inductor / "locks").mkdir()
    (cache.inductor / "locks" / "x.lock").write_bytes(b"")  # torch's own locks are not entries
    target = Target("Dataset990_WarmerDemo", "nnUNetPlans", "2d", "nnUNetTrainerCPUCompile_2it", "cpu", 10)
    manifest = new_manifest(cache, target, {"device": "cpu"}, "fp", None,
                            ReplayResult(True, {}, closure=tuple(ENTRIES.values()))).write().path
    assert set(json.loads(manifest.read_text())["entries"]) == set(ENTRIES.values())
    return cache, manifest


def test_an_intact_cache_checks_clean(published, capsys) -> None:
    cache, _ = published
    assert main(["check", "--cache-dir", str(cache.root)]) == 0
    assert "0 damaged entries" in capsys.readouterr().out



def test_check_reads_each_manifest_once(published, capsys, monkeypatch) -> None:
    cache, manifest = published
    reads: list[Path] = []
    read = Manifest.read.__func__

    def counted(cls, path: Path) -> Manifest:
        reads.append(path)
        return read(cls, path)

    monkeypatch.setattr(Manifest, "read", classmethod(counted))
    assert main(["check", "--cache-dir", str(cache.root)]) == 0
    assert reads == [manifest]

@pytest.mark.parametrize("kind", sorted(ENTRIES))
@pytest.mark.parametrize("damage", ["truncated", "garbled"])
def test_each_kind_of_damage_is_named(published, capsys, kind: str, damage: str) -> None:
    cache, manifest = published
    path = cache.root / ENTRIES[kind]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else data[:10] + b"\x00garbage" + data[18:])
    assert main(["check", "--cache-dir", str(cache.root), "--json"]) == 1
    found = {item["path"]: item["problem"] for item in json.loads(capsys.readouterr().out)["damaged"]}
    assert found == {str(path): found[str(path)], str(manifest): found[str(manifest)]}
    assert "checksum differs" in found[str(path)] and "no longer proven warm" in found[str(manifest)]


def test_a_garbled_manifest_is_named_and_quarantine_moves_the_damage(published, capsys) -> None:
    cache, manifest = published
    manifest.write_text('{"entries": {')
    damaged = damaged_entries(cache)
    assert damaged == [Damage(manifest, "manifest does not parse")]
    moved = quarantine(cache, damaged)
    assert moved is not None and moved[1] == 1 and not manifest.exists()
    assert (moved[0] / manifest.relative_to(cache.root)).read_text() == '{"entries": {'
    assert main(["check", "--cache-dir", str(cache.root)]) == 0


def test_run_sets_damage_aside_before_the_job_starts(published, capsys) -> None:
    """A job must never load a garbled entry: `run` quarantines it (and the manifest listing it) first."""
    cache, manifest = published
    path = cache.root / ENTRIES["generated code"]
    path.write_bytes(b"\x1b" + path.read_bytes())
    job = f"import os, sys; sys.exit(3 if os.path.exists({str(path)!r}) else 0)"
    assert main(["run", "--cache-dir", str(cache.root), "--", sys.executable, "-c", job]) == 0
    assert "moved 2 damaged files" in capsys.readouterr().err
    assert not manifest.exists() and main(["check", "--cache-dir", str(cache.root)]) == 0


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to be nobody")
def test_a_user_who_cannot_move_damage_runs_the_job_on_a_private_cache(tmp_path) -> None:
    """The team's training user may only read the cache: its job compiles into an empty private cache instead
    of loading damaged entries, and the shared cache stays as it was (its owner repairs it)."""
    shared = Path(tempfile.mkdtemp(prefix="nnunet-warmer-readonly-"))  # tmp_path is private to root
    try:
        os.chmod(shared, 0o755)
        cache = CacheDir(shared / "cache")
        path = cache.root / ENTRIES["generated code"]
        path.parent.mkdir(parents=True)
        path.write_bytes(b"original")
        target = Target("Dataset990_WarmerDemo", "nnUNetPlans", "2d", "nnUNetTrainerCPUCompile_2it", "cpu", 10)
        new_manifest(cache, target, {"device": "cpu"}, "fp", None,
                     ReplayResult(True, {}, closure=(ENTRIES["generated code"],))).write()
        path.write_bytes(b"garbled")
        for folder, _, files in os.walk(shared):
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(Path(folder) / name, 0o644)
        result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                 str(BIN / "nnunet-warmer"), "run", "--cache-dir", str(cache.root), "--",
                                 "sh", "-c", 'echo "$TORCHINDUCTOR_CACHE_DIR"'], capture_output=True, text=True,
                                timeout=300, cwd=shared, env={**os.environ, "HOME": str(shared)})
        assert result.returncode == 0, result.stderr
        assert "cannot move them to quarantine" in result.stderr
        assert "nnunet-warmer-private-cache-" in result.stdout and str(cache.root) not in result.stdout
        assert path.read_bytes() == b"garbled" and not (cache.root / "quarantine").exists()
    finally:
        shutil.rmtree(shared)


def test_temp_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path) -> None:
    """What a warmer killed mid-write leaves: this host's dead pid goes at once, another host's after a day."""
    host, dead = socket.gethostname(), subprocess.Popen(["true"])
    dead.wait()
    names = {"dead here": f".fp.json.{host}.{dead.pid}.tmp", "alive here": f".fp.json.{host}.{os.getpid()}.tmp",
             "other host, old": ".fp.json.node7.cluster.123.tmp", "other host, new": ".fp.json.node8.456.tmp"}
    for name in names.values():
        (tmp_path / name).write_text("{")
    os.utime(tmp_path / names["other host, old"], (0, time.time() - 2 * ABANDONED_AFTER_SECONDS))
    assert remove_abandoned_temps(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names["alive here"], names["other host, new"]])


TRAINER = "nnUNetTrainerCPUCompile_2it"
CLOSURES = {"2d": ("FX entry", "kernel .so"), "3d_fullres": ("AOT entry", "kernel .so", "generated code")}


@pytest.fixture
def two_targets(tmp_path: Path) -> tuple[CacheDir, dict[str, Path]]:
    """Two published targets whose closures share one kernel, in a cache that also holds an entry neither lists."""
    cache = CacheDir(tmp_path / "cache")
    for index, relative in enumerate(ENTRIES.values()):
        (cache.root / relative).parent.mkdir(parents=True, exist_ok=True)
        (cache.root / relative).write_bytes(bytes(range(256)) * (index + 1))
    manifests = {}
    for configuration, kinds in CLOSURES.items():
        target = Target("Dataset990_WarmerDemo", "nnUNetPlans", configuration, TRAINER, "cpu", 2)
        closure = tuple(ENTRIES[kind] for kind in kinds)
        manifests[configuration] = new_manifest(cache, target, {"device": "cpu"}, configuration, None,
                                                ReplayResult(True, {}, closure=closure)).write().path
    return cache, manifests


def test_a_manifest_lists_its_closure_and_nothing_else(two_targets) -> None:
    cache, manifests = two_targets
    for configuration, kinds in CLOSURES.items():
        manifest = Manifest.read(manifests[configuration])
        assert manifest.lists_closure and set(manifest.entries) == {ENTRIES[kind] for kind in kinds}


def test_damage_reaches_only_the_targets_whose_closure_holds_it(two_targets, capsys) -> None:
    cache, manifests = two_targets
    only_3d = cache.root / ENTRIES["AOT entry"]
    only_3d.write_bytes(b"\x1b" + only_3d.read_bytes())
    key_2d, key_3d = (Manifest.read(manifests[c]).target.key for c in ("2d", "3d_fullres"))
    assert damaged_entries(cache, [key_2d]) == []
    assert {d.path for d in damaged_entries(cache, [key_3d])} == {only_3d, manifests["3d_fullres"]}
    assert main(["check", "--cache-dir", str(cache.root), "--json"]) == 1
    assert {d["path"] for d in json.loads(capsys.readouterr().out)["damaged"]} == {str(only_3d),
                                                                                  str(manifests["3d_fullres"])}
    shared = cache.root / ENTRIES["kernel .so"]
    shared.write_bytes(shared.read_bytes()[:100])
    assert {d.path for d in damaged_entries(cache, [key_2d])} == {shared, manifests["2d"]}


def test_run_sets_aside_only_the_damage_of_its_commands_target(two_targets, tmp_path, capsys) -> None:
    """In place (`--in-place`): a job of the 2d target on a cache where a file only the 3d_fullres target loads is
    garbled: the job starts without moving anything, and the 3d_fullres target's damage waits for its own job or
    warm."""
    cache, manifests = two_targets
    only_3d = cache.root / ENTRIES["generated code"]
    only_3d.write_bytes(b"\x1b" + only_3d.read_bytes())
    train = tmp_path / "bin" / "nnUNetv2_train"  # stands in for nnU-Net's: `run` reads the target off the arguments
    train.parent.mkdir()
    train.write_text("#!/bin/sh\nexit 0\n")
    train.chmod(0o755)
    for configuration, moved in (("2d", False), ("3d_fullres", True)):
        assert main(["run", "--in-place", "--cache-dir", str(cache.root), "--", str(train), "Dataset990_WarmerDemo",
                     configuration, "0", "-tr", TRAINER, "-device", "cpu"]) == 0
        assert ("moved 2 damaged files" in capsys.readouterr().err) is moved
        assert only_3d.exists() is not moved and manifests["3d_fullres"].exists() is not moved
        assert manifests["2d"].exists()


def test_run_of_a_target_without_a_manifest_checks_every_manifest(two_targets, tmp_path, capsys) -> None:
    """In place: a cold target's job may hit entries other targets' verifies listed, so its pre-job check reads
    them all."""
    cache, manifests = two_targets
    only_3d = cache.root / ENTRIES["generated code"]
    only_3d.write_bytes(b"\x1b" + only_3d.read_bytes())
    train = tmp_path / "bin" / "nnUNetv2_train"
    train.parent.mkdir()
    train.write_text("#!/bin/sh\nexit 0\n")
    train.chmod(0o755)
    assert main(["run", "--in-place", "--cache-dir", str(cache.root), "--", str(train), "Dataset990_WarmerDemo",
                 "3d_lowres", "0", "-tr", TRAINER, "-device", "cpu"]) == 0
    assert "moved 2 damaged files" in capsys.readouterr().err
    assert not only_3d.exists() and not manifests["3d_fullres"].exists() and manifests["2d"].exists()


def test_check_reports_the_entries_no_closure_lists(two_targets, capsys) -> None:
    cache, _ = two_targets
    assert main(["check", "--cache-dir", str(cache.root), "--json"]) == 0
    unlisted = json.loads(capsys.readouterr().out)["unlisted"]
    expected = {ENTRIES["Triton file"]: (cache.root / ENTRIES["Triton file"]).stat().st_size}
    assert unlisted == {"files": 1, "bytes": sum(expected.values()), "entries": expected}
