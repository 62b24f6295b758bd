"""Shared fixtures: synthetic datasets planned by nnU-Net's real planner, once per session; and how the tests are
shared out between pytest-xdist's two workers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from warmer.demo import CPU_TRAINERS_DIR
from warmer.demo.synthetic import DEFAULT_DATASET_ID, NnunetPaths, plan_and_preprocess, write_raw_dataset

from .helpers import CONCURRENT_CONFIGURATION, CONCURRENT_WARMERS, job_env, warm_command


def pytest_configure(config: pytest.Config) -> None:
    """Fewer of nnU-Net's spawned workers in every job the tests start: its defaults (up to 12 augmentation and
    8 export processes, each importing torch) cost about 25 s per training on 2 cores and compile nothing. The
    export count stays at the core count: nnUNetv2_predict runs with min(nnUNet_def_n_proc, cores) torch
    threads, and on CPU the thread count is part of inductor's cache keys (1 missed a graph warmed with 2)."""
    os.environ.setdefault("nnUNet_n_proc_DA", "1")
    os.environ.setdefault("nnUNet_def_n_proc", str(os.cpu_count()))


# One worker per group: tests that share what is costly to make (a session or module fixture other than these cheap
# ones, made once per worker) or a real service's global state (its marker: the SLURM queue, the gluster nodes).
CHEAP_SHARED_FIXTURES = {"planned", "tmp_path_factory", "worker_id", "testrun_uid"}
SERVICE_MARKERS = ("slurm", "gluster", "image")
# the groups that take longest, longest first (each is one worker's for many minutes); the other tests follow
LONGEST_GROUPS = ("gluster", "e2e_cache", "concurrently_warmed", "slurm")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put each test in an xdist group with every test it shares a costly fixture or a service with, named after
    what they share, and put the longest groups first. `--dist loadgroup` gives each group to one worker."""
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    shared = [_shared_by(item) for item in items]
    first_of: dict[str, int] = {}
    for index, keys in enumerate(shared):
        for key in keys:
            parent[root(index)] = root(first_of.setdefault(key, index))
    groups: dict[int, list[int]] = {}
    for index in range(len(items)):
        groups.setdefault(root(index), []).append(index)
    names: dict[int, str] = {}
    for group, members in groups.items():
        keys = [key for index in members for key in shared[index]]
        if keys:
            names[group] = next((k for k in LONGEST_GROUPS if k in keys), keys[0])
            for index in members:
                items[index].add_marker(pytest.mark.xdist_group(names[group]))

    def rank(group: int) -> int:
        name = names.get(group)
        return LONGEST_GROUPS.index(name) if name in LONGEST_GROUPS else len(LONGEST_GROUPS)

    items[:] = [items[index] for group in sorted(groups, key=rank) for index in groups[group]]


def _shared_by(item: pytest.Item) -> list[str]:
    """What `item` shares with other tests: the services it uses, its costly session fixtures and its module
    fixtures (those per module)."""
    shared = [m for m in SERVICE_MARKERS if item.get_closest_marker(m)]
    for name, definitions in item._fixtureinfo.name2fixturedefs.items():
        scope = definitions[-1].scope
        if name not in CHEAP_SHARED_FIXTURES and scope in ("session", "module"):
            shared.append(name if scope == "session" else f"{item.nodeid.split('::')[0]}::{name}")
    return shared


def pytest_report_header() -> str:
    from importlib import metadata

    return f"nnunetv2 {metadata.version('nnunetv2')} from {Path(__import__('nnunetv2').__file__).parent}"


@pytest.fixture(scope="session")
def planned(tmp_path_factory: pytest.TempPathFactory) -> NnunetPaths:
    """Dataset990: 6 synthetic 32x40x40 cases, planned and preprocessed for 2d and 3d_fullres."""
    paths = NnunetPaths(tmp_path_factory.mktemp("nnunet"))
    write_raw_dataset(paths)
    plan_and_preprocess(paths, DEFAULT_DATASET_ID, ["2d", "3d_fullres"])
    return paths


@pytest.fixture(scope="session")
def e2e_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    """One shared cache for the end-to-end tests, and the warm report of each Dataset990 configuration
    warmed into it so far (see test_end_to_end's `warmed`)."""
    return tmp_path_factory.mktemp("shared") / "torch-cache", {}


@pytest.fixture(scope="session")
def concurrently_warmed(planned: NnunetPaths, tmp_path_factory: pytest.TempPathFactory
                        ) -> tuple[Path, list[tuple[int, str, str]]]:
    """Dataset990 2d warmed by 4 `nnunet-warmer warm` processes started at once into one new cache:
    the cache, and each process's (exit code, stdout, stderr). The concurrency test checks the outcome; the
    fault-injection test starts its trials from copies of this cache, so it pays no cold compile of its own."""
    cache = tmp_path_factory.mktemp("concurrent") / "shared-cache"
    env = {**os.environ, **job_env(planned)}
    processes = [subprocess.Popen(warm_command(cache, CONCURRENT_CONFIGURATION, "--json"), env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(CONCURRENT_WARMERS)]
    outputs = [p.communicate(timeout=1200) for p in processes]
    return cache, [(p.returncode, out, err) for p, (out, err) in zip(processes, outputs, strict=True)]


@pytest.fixture
def nnunet_env(planned: NnunetPaths, monkeypatch: pytest.MonkeyPatch) -> NnunetPaths:
    for key, value in planned.environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("nnUNet_extTrainer", str(CPU_TRAINERS_DIR))
    return planned
