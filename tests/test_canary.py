"""The warm job as a canary: a node that cannot compile is found by `warm`, named by `status`, refused by `run`
before the job starts, and trained eager only when asked."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from warmer.values.capability import diagnose, gpu_too_old

from .helpers import cli, job_env, target_args, train_command, without_compilers


@pytest.mark.parametrize(("major", "minor", "too_old"), [(6, 0, True), (6, 1, True), (7, 0, False), (8, 6, False),
                                                         (9, 0, False)])
def test_gpu_capability_is_judged_by_torchs_own_rule(major, minor, too_old) -> None:
    found = gpu_too_old(SimpleNamespace(name="Some GPU", major=major, minor=minor))
    assert (found is not None) == too_old
    if found is not None:
        assert f"capability {major}.{minor}" in found.detail and "nnUNet_compile=f" in found.advice


def test_the_errors_of_a_node_that_cannot_compile_are_recognised_through_torchs_wrappers() -> None:
    from torch._inductor.exc import (
        CppCompileError,
        GPUTooOldForTriton,
        InductorError,
        InvalidCxxCompiler,
        TritonMissing,
    )

    def wrapped(error: Exception) -> Exception:
        try:
            try:
                raise error
            except Exception as inner:
                raise InductorError(inner, None) from inner
        except InductorError as outer:
            return outer

    causes = {
        "no working C/C++ compiler": InvalidCxxCompiler(),
        "GPU too old for Triton": GPUTooOldForTriton(SimpleNamespace(name="Tesla P100", major=6, minor=0), None),
        "Triton missing or broken": TritonMissing(None),
        "the C++ compiler fails on inductor's code": CppCompileError(["g++", "x.cpp"], "error: x"),
    }
    for cause, error in causes.items():
        found = diagnose(wrapped(error))
        assert found is not None and found.cause == cause and "nnUNet_compile=f" in found.line(), (cause, found)
    assert diagnose(wrapped(ValueError("a plans problem"))) is None
    assert diagnose(RuntimeError("CUDA out of memory")) is None


@pytest.mark.e2e
def test_a_node_without_a_compiler_is_named_refused_and_trained_eager_on_request(planned, tmp_path) -> None:
    cache = tmp_path / "cache"
    env = job_env(planned, **without_compilers(tmp_path / "bin"))
    warm = cli("warm", *target_args("2d", cache=cache), env=env)
    last = warm.stderr.strip().splitlines()[-1]
    assert warm.returncode == 2, warm.stderr[-3000:]
    assert "cannot compile: no working C/C++ compiler" in last and "nnUNet_compile=f" in last, last

    status = cli("status", *target_args("2d", cache=cache), env=env)
    assert status.returncode == 3 and status.stdout.startswith("cannot-compile"), status.stdout
    assert "C/C++ compiler" in status.stdout

    results = tmp_path / "results"
    train_env = {**env, "nnUNet_results": str(results)}
    refused = cli("run", "--cache-dir", str(cache), "--", *train_command("990", "2d"), env=train_env)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "--eager-if-cannot-compile" in lines[0], refused.stderr
    assert not results.exists(), "the job started"

    summary_file = tmp_path / "run.json"
    eager = cli("run", "--cache-dir", str(cache), "--eager-if-cannot-compile", "--json", str(summary_file), "--",
                *train_command("990", "2d"), env=train_env)
    assert eager.returncode == 0, eager.stderr[-3000:]
    assert "running this job eager (nnUNet_compile=f)" in eager.stderr
    summary = json.loads(summary_file.read_text())
    assert summary["fx_hit"] == summary["fx_miss"] == 0 and summary["compile_seconds"] == 0, summary

    stats = json.loads(cli("stats", "--cache-dir", str(cache), "--json", env=env).stdout)
    assert stats["totals"]["cannot_compile"] == 1, stats["totals"]
