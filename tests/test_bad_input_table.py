"""Every bad input against an existing cache: exit code 2, one error line (after any progress lines), no
traceback, and the cache tree byte-identical (paths, modes and contents hashed before and after)."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
from filelock import FileLock

from warmer.cli import main
from warmer.values import compat

from .helpers import lock_path, target_args
from .test_errors import CASES

WARM_2D = target_args("2d")


def tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        digest.update(f"{path.relative_to(root)} {info.st_mode:o}\n".encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A cache with something in each of its folders."""
    root = tmp_path / "cache"
    for relative, content in [("inductor/fxgraph/ab/fabc/entry", b"\x80compiled"),
                              ("inductor/aotautograd/cd/entry", b"\x80aot"),
                              ("manifests/Dataset990_WarmerDemo/nnUNetPlans/2d/x/1.json", b"{}"),
                              ("ledger/host.jsonl", b"{}\n")]:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)
    (root / "locks").mkdir()
    return root


def _lock_path(cache: Path) -> Path:
    lock = lock_path(cache, "2d")
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    return lock


def _fake_version(monkeypatch: pytest.MonkeyPatch, package: str, version: str) -> None:
    real = compat.metadata.version
    monkeypatch.setattr(compat.metadata, "version", lambda name: version if name == package else real(name))


def _no_space(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


SPECIAL = ["dataset.json missing", "lock wait timed out", "nnunetv2 version", "torch version",
           "no space left mid-write", "cache dir unwritable"]


@pytest.mark.parametrize("case", sorted(CASES) + SPECIAL)
def test_bad_input_leaves_the_cache_byte_identical(nnunet_env, cache, tmp_path, capsys, monkeypatch,
                                                    case: str) -> None:
    args = ["warm", *(CASES[case](nnunet_env, tmp_path) if case in CASES else WARM_2D), "--cache-dir", str(cache)]
    dataset_json = nnunet_env.preprocessed / "Dataset990_WarmerDemo" / "dataset.json"
    original = dataset_json.read_text()
    holder = None
    if case == "dataset.json missing":
        dataset_json.unlink()
    elif case == "lock wait timed out":
        holder = FileLock(str(_lock_path(cache)))
        holder.acquire()
        args += ["--wait-timeout", "0.5"]
    elif case == "nnunetv2 version":
        _fake_version(monkeypatch, "nnunetv2", "2.9.0")
    elif case == "torch version":
        _fake_version(monkeypatch, "torch", "2.99.0")
    elif case == "cache dir unwritable":
        if os.geteuid() == 0:
            pytest.skip("root writes through any permission")
        os.chmod(cache, 0o555)
    elif case == "no space left mid-write":
        monkeypatch.setattr(os, "fsync", _no_space)
        args = ["stats", "--zero", "--cache-dir", str(cache)]  # writes at once; a warm writes after compiling
    before = tree_hash(cache)
    try:
        assert main(args) == 2
    finally:
        dataset_json.write_text(original)
        if holder is not None:
            holder.release()
    err = capsys.readouterr().err.strip().splitlines()  # progress lines may come before the error
    assert err[-1].startswith("nnunet-warmer: error: ") and not any("Traceback" in line for line in err), err
    assert sum(line.startswith("nnunet-warmer: error: ") for line in err) == 1, err
    assert tree_hash(cache) == before, f"{case} changed the cache"
    if case == "no space left mid-write":
        assert "partial write was removed" in err[-1]
        assert not list(cache.rglob("*.tmp"))
