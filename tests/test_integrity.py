"""`check` finds each kind of damaged cache file without compiling, and names the manifests that list it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from warmer.cachedir import CacheDir
from warmer.cli import main
from warmer.integrity import damaged_entries, quarantine
from warmer.plans import Target
from warmer.publish import write_manifest

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
    manifest = write_manifest(cache, target, {"device": "cpu"}, "fp", None, {"counters": {}})
    assert set(json.loads(manifest.read_text())["entries"]) == set(ENTRIES.values())
    return cache, manifest


def test_an_intact_cache_checks_clean(published, capsys) -> None:
    cache, _ = published
    assert main(["check", "--cache-dir", str(cache.root)]) == 0
    assert "0 damaged entries" in capsys.readouterr().out


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
    assert damaged == [{"path": str(manifest), "problem": "manifest does not parse"}]
    moved = quarantine(cache, damaged)
    assert moved is not None and not manifest.exists()
    assert (moved / manifest.relative_to(cache.root)).read_text() == '{"entries": {'
    assert main(["check", "--cache-dir", str(cache.root)]) == 0
