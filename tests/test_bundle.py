"""Bundles: an exported target imported at another path trains warm; a bundle altered by one byte, crafted to
escape the cache dir, or verified under another environment is refused with nothing written."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from warmer.lifecycle.bundle import INDEX_NAME, TRAILER_PREFIX
from warmer.values.fingerprint import fingerprint_id

from .helpers import cli, job_env, run_under_warmer, target_args, train_command
from .test_bad_input_table import tree_hash

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bundle(planned, concurrently_warmed, tmp_path_factory) -> Path:
    """Dataset990 2d (CPU test trainer) exported from the session's concurrently warmed cache."""
    path = tmp_path_factory.mktemp("bundle") / "Dataset990-2d.bundle"
    result = cli("export", *target_args("2d", cache=concurrently_warmed[0]), "--to", str(path), "--json",
                 env=job_env(planned))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["files"] == len(json.loads(read_members(path)[INDEX_NAME])["files"])
    return path


def read_members(path: Path) -> dict[str, bytes]:
    body = path.read_bytes()[: -(len(TRAILER_PREFIX) + 65)]
    with tarfile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)), mode="r|") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]


def write_bundle(path: Path, members: dict[str, bytes], extra: Callable[[tarfile.TarFile], None] = lambda _: None
                 ) -> None:
    """A bundle as `export` writes one (index first, checksums and trailer right), from the given members."""
    index = json.loads(members[INDEX_NAME])
    index["files"] = {name: f"{len(raw)}:{hashlib.sha256(raw).hexdigest()}" for name, raw in members.items()
                      if name != INDEX_NAME}
    ordered = {INDEX_NAME: json.dumps(index).encode(), **{k: v for k, v in members.items() if k != INDEX_NAME}}
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, raw in ordered.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
        extra(tar)
    body = zstandard.ZstdCompressor().compress(tar_bytes.getvalue())
    path.write_bytes(body + TRAILER_PREFIX + hashlib.sha256(body).hexdigest().encode() + b"\n")


def import_into(cache: Path, bundle: Path, planned, *options: str):
    return cli("import", str(bundle), "--cache-dir", str(cache), *options, env=job_env(planned))


def assert_refused(result, *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(word in lines[0] for word in words), lines[0]


def test_an_imported_target_trains_warm_at_another_path(planned, bundle, tmp_path) -> None:
    cache = tmp_path / "elsewhere" / "cache"
    result = import_into(cache, bundle, planned, "--json")
    assert result.returncode == 0, result.stderr
    imported = json.loads(result.stdout)
    assert imported["written"] == imported["files"] - 1 and imported["kept"] == 0
    assert cli("status", *target_args("2d", cache=cache), env=job_env(planned)).returncode == 0
    again = json.loads(import_into(cache, bundle, planned, "--json").stdout)
    assert (again["written"], again["kept"]) == (0, imported["written"])
    listing = json.loads(cli("ls", "--cache-dir", str(cache), "--json", env=job_env(planned)).stdout)
    assert [(t["label"], t["here"]) for t in listing["targets"]] == [(imported["targets"][0]["label"], "usable")]
    kernels = sorted(cache.rglob("*.so"))
    env = {**job_env(planned), "nnUNet_results": str(tmp_path / "results")}
    _, summary = run_under_warmer(cache, tmp_path / "run.json", train_command("990", "2d"), env)
    assert summary["fx_miss"] == 0 and summary["aot_miss"] == 0 and summary["fx_hit"] > 0, summary
    assert summary["compiled_locally"] == 0, "the job built a kernel (a C++ compiler ran) in its local copy"
    assert sorted(cache.rglob("*.so")) == kernels, "a kernel was built: a C++ compiler ran"


@pytest.mark.parametrize("where", ["first", "middle", "last of the body", "trailer"])
def test_one_changed_byte_is_refused_and_nothing_is_written(planned, bundle, concurrently_warmed, tmp_path,
                                                            where) -> None:
    raw = bytearray(bundle.read_bytes())
    body = len(raw) - len(TRAILER_PREFIX) - 65
    position = {"first": 0, "middle": body // 2, "last of the body": body - 1, "trailer": len(raw) - 10}[where]
    raw[position] ^= 0x01
    altered = tmp_path / "altered.bundle"
    altered.write_bytes(bytes(raw))
    cache = tmp_path / "cache"
    shutil.copytree(concurrently_warmed[0], cache)
    shutil.rmtree(cache / "manifests")
    before = tree_hash(cache)
    assert_refused(import_into(cache, altered, planned), "refused", "nothing was imported")
    assert tree_hash(cache) == before
    fresh = tmp_path / "fresh"
    assert_refused(import_into(fresh, altered, planned), "refused")
    assert not fresh.exists()


@pytest.mark.parametrize("crafted", ["parent", "absolute", "symlink", "device"])
def test_members_outside_the_cache_entries_are_refused(planned, bundle, tmp_path, crafted) -> None:
    members = read_members(bundle)
    extra: Callable[[tarfile.TarFile], None] = lambda _: None  # noqa: E731
    if crafted == "parent":
        members["inductor/../../escaped.py"] = b"import os\n"
    elif crafted == "absolute":
        members[str(tmp_path / "escaped.py")] = b"import os\n"
    else:
        def extra(tar: tarfile.TarFile) -> None:
            info = tarfile.TarInfo("inductor/zz/escaped.py")
            if crafted == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(tmp_path / "escaped.py")
            else:
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            tar.addfile(info)
    crafted_bundle = tmp_path / "crafted.bundle"
    write_bundle(crafted_bundle, members, extra)
    cache = tmp_path / "cache"
    cache.mkdir()
    before = tree_hash(cache)
    assert_refused(import_into(cache, crafted_bundle, planned), "refused")
    assert tree_hash(cache) == before and not (tmp_path / "escaped.py").exists()
    assert not any(tmp_path.rglob("escaped.py"))


def another_environments_bundle(bundle: Path, to: Path) -> Path:
    """`bundle` as if verified under torch 2.0.0+elsewhere (index, checksums, fingerprint id and trailer made
    consistent), written to `to`."""
    members = read_members(bundle)
    index = json.loads(members[INDEX_NAME])
    (old_name,) = [name for name in members if name.startswith("manifests/")]
    manifest = json.loads(members.pop(old_name))
    manifest["fingerprint"]["torch"] = "2.0.0+elsewhere"
    manifest["fingerprint_id"] = fingerprint_id(manifest["fingerprint"])
    new_name = f"{os.path.dirname(old_name)}/{manifest['fingerprint_id']}.json"
    members[new_name] = json.dumps(manifest).encode()
    index["targets"][0].update(manifest=new_name, fingerprint=manifest["fingerprint"])
    members[INDEX_NAME] = json.dumps(index).encode()
    write_bundle(to, members)
    return to


def test_a_bundle_from_another_environment_needs_the_flag_and_is_stale(planned, bundle, tmp_path) -> None:
    other = another_environments_bundle(bundle, tmp_path / "other.bundle")
    cache = tmp_path / "cache"
    assert_refused(import_into(cache, other, planned), "another environment", "torch", "--allow-other-environment")
    assert not cache.exists()
    result = import_into(cache, other, planned, "--allow-other-environment")
    assert result.returncode == 0 and "other environment" in result.stdout, result.stderr
    status = cli("status", *target_args("2d", cache=cache), env=job_env(planned))
    assert status.returncode == 1 and status.stdout.startswith("stale") and "torch: 2.0.0+elsewhere" in status.stdout


def test_export_of_a_target_that_is_not_warm_is_a_one_line_error(planned, tmp_path) -> None:
    result = cli("export", *target_args("2d", cache=tmp_path / "empty"), "--to", str(tmp_path / "b.bundle"),
                 env=job_env(planned))
    assert_refused(result, "cold", "warm it first")
    assert not (tmp_path / "b.bundle").exists()
