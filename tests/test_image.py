"""The project's image, built from the Dockerfile by a real OCI engine (`.ci/image up`: podman, no registry) and run:
its CLI, a warm inside a container and training in another, an image that starts warm from a bundle and one that
refuses a bundle of other software, the default `watch` and its metrics, and ownership and trust of mounted caches.

The containers run as the image's own non-root user (10001), rootful podman maps it to the same uid on this host,
so the host folders mounted for it are given to 10001. Jobs get the tests' nnU-Net settings and the CPU trainers.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from warmer.demo import CPU_TRAINERS_DIR

from .helpers import CPU_TRAINER, cli, job_env, target_args
from .test_bundle import another_environments_bundle

pytestmark = [pytest.mark.e2e, pytest.mark.image]
STATE = Path("/var/lib/nnunet-warmer-podman")  # .ci/image's
IMAGE = "localhost/nnunet-warmer:ci"
REPOSITORY = Path(__file__).resolve().parent.parent
USER = 10001  # the Dockerfile's
TRAIN = ["nnUNetv2_train", "990", "2d", "0", "-tr", CPU_TRAINER, "-device", "cpu"]


class Engine:
    """podman with .ci/image's private configuration and storage."""

    def __init__(self) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": str(STATE / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(STATE / "storage.conf")}

    def __call__(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        """A container run to its end and removed. Without its HEALTHCHECK, which podman would schedule through
        systemd (absent here: two error lines on stderr)."""
        return self("run", "--rm", "--no-healthcheck", *args)

    def build(self, context: Path, tag: str, *args: str) -> subprocess.CompletedProcess:
        """A build as .ci/image made the first one (same pip folders mounted), so its layers are reused."""
        volumes = [f"-v{folder}:{folder}:ro" for folder in (STATE / "pip-folders").read_text().split()]
        return self("build", "--format", "docker", "--pull=never", *volumes, *args, "-t", tag, str(context))


@pytest.fixture(scope="module")
def engine() -> Engine:
    engine = Engine()
    if shutil.which("podman") is None or engine("image", "exists", IMAGE).returncode != 0:
        pytest.skip(f"no image {IMAGE} here: build it with `.ci/image up` (root; installs podman; about 5 minutes)")
    return engine


def owned_folder(path: Path) -> Path:
    """A folder of the image's user, as a cluster user's own folder is."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, USER, USER)
    return path


class Host:
    """What the containers mount: the cache, nnU-Net's preprocessed data (nnU-Net writes its splits there), the
    CPU trainers and a folder for the summaries."""

    def __init__(self, root: Path, preprocessed: Path) -> None:
        self.cache = owned_folder(root / "cache")
        os.chmod(self.cache, 0o2750)
        self.preprocessed = root / "preprocessed"
        shutil.copytree(preprocessed, self.preprocessed)
        for folder, _, files in os.walk(self.preprocessed):
            for path in [folder, *(os.path.join(folder, name) for name in files)]:
                os.chown(path, USER, USER)
        self.out = owned_folder(root / "out")

    def mounts(self, cache: Path | None = None) -> list[str]:
        cache_mount = [] if cache is None else ["-v", f"{cache}:/cache"]
        return [*cache_mount, "-v", f"{self.preprocessed}:/data/nnUNet_preprocessed", "-v", f"{self.out}:/out",
                "-v", f"{CPU_TRAINERS_DIR}:/trainers:ro", "-e", "nnUNet_extTrainer=/trainers",
                "-e", f"nnUNet_n_proc_DA={os.environ['nnUNet_n_proc_DA']}",
                "-e", f"nnUNet_def_n_proc={os.environ['nnUNet_def_n_proc']}"]


@pytest.fixture(scope="module")
def host(planned, tmp_path_factory) -> Host:
    return Host(tmp_path_factory.mktemp("image"), planned.preprocessed)


def ownership(path: Path) -> tuple[int, int, str]:
    info = path.stat()
    return info.st_uid, info.st_gid, oct(info.st_mode)


@pytest.fixture(scope="module")
def warmed_in_a_container(engine, host) -> dict:
    """Dataset990 2d warmed cold inside a container into the host's cache: its report."""
    before = ownership(host.cache)
    result = engine.run(*host.mounts(host.cache), IMAGE, "warm", *target_args("2d"), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    (report,) = json.loads(result.stdout)["targets"]
    assert ownership(host.cache) == before, "the container changed the mounted cache dir's owner or mode"
    return report


def test_the_cli_runs_in_the_container_as_a_user_who_is_not_root(engine) -> None:
    version = engine.run(IMAGE, "--version")
    assert version.returncode == 0 and version.stdout.startswith("nnunet-warmer 0.1.0 (Python 3."), version
    assert f"torch {metadata.version('torch')}" in version.stdout, version.stdout
    usage = engine.run(IMAGE, "--help")
    assert usage.returncode == 0 and "warm" in usage.stdout and "watch" in usage.stdout, usage
    who = engine.run("--entrypoint", "id", IMAGE)
    assert who.stdout.startswith(f"uid={USER}(warmer) gid={USER}(warmer)"), who


def test_warm_in_a_container_then_train_in_another_without_a_miss(engine, host, warmed_in_a_container) -> None:
    report = warmed_in_a_container
    assert report["state"] == "warm" and report["cold"]["counters"]["fx_miss"] > 0, report
    assert (report["verify"]["counters"]["fx_miss"], report["verify"]["counters"]["aot_miss"]) == (0, 0), report
    result = engine.run(*host.mounts(host.cache), IMAGE, "run", "--json", "/out/train.json", "--", *TRAIN)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((host.out / "train.json").read_text())
    assert (summary["fx_miss"], summary["aot_miss"], summary["compiled_locally"]) == (0, 0, 0), summary
    assert summary["fx_hit"] > 0, summary
    written = [path for path in host.cache.rglob("*") if not path.is_symlink()]
    assert written and all(path.stat().st_uid == USER for path in written)
    assert not [path for path in written if path.stat().st_mode & 0o002], "a world-writable file in the cache"


def build_context(tmp_path: Path, bundle: Path) -> Path:
    """What the Dockerfile's build needs, and a bundle beside it."""
    context = tmp_path / "context"
    context.mkdir()
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy2(REPOSITORY / name, context / name)
    shutil.copytree(REPOSITORY / "warmer", context / "warmer", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(bundle, context / bundle.name)
    return context


def test_an_image_built_with_a_bundle_trains_warm_with_no_cache_mounted(engine, host, warmed_in_a_container,
                                                                         tmp_path) -> None:
    exported = engine.run(*host.mounts(host.cache), IMAGE, "export", *target_args("2d"), "--to",
                      "/out/image.bundle")
    assert exported.returncode == 0, exported.stderr[-3000:]
    tag = "localhost/nnunet-warmer:ci-warm"
    try:
        start = time.monotonic()
        built = engine.build(build_context(tmp_path, host.out / "image.bundle"), tag, "--build-arg",
                             "WARMER_BUNDLE=image.bundle")
        seconds = time.monotonic() - start
        assert built.returncode == 0, built.stderr[-3000:]
        (install,) = [step for step in (built.stdout + built.stderr).split("STEP ") if "RUN pip install" in step]
        assert "Using cache" in install, "the layer with torch was built again"
        print(f"image with a bundle built in {seconds:.1f} s")
        result = engine.run(*host.mounts(), tag, "run", "--json", "/out/bundled.json", "--", *TRAIN)
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads((host.out / "bundled.json").read_text())
        assert (summary["fx_miss"], summary["aot_miss"], summary["compiled_locally"]) == (0, 0, 0), summary
        assert summary["fx_hit"] > 0 and summary["local_copy"].startswith("/tmp/"), summary
    finally:
        engine("rmi", "--force", tag)


def test_a_bundle_of_other_software_fails_the_build_in_one_line(engine, planned, concurrently_warmed,
                                                                tmp_path) -> None:
    """The host's own bundle, where the host's Python or torch is not the image's; otherwise one edited to name
    another torch."""
    bundle = tmp_path / "host.bundle"
    result = cli("export", *target_args("2d", cache=concurrently_warmed[0]), "--to", str(bundle),
                 env=job_env(planned))
    assert result.returncode == 0, result.stderr
    image_versions = engine.run(IMAGE, "--version").stdout
    if f"Python {platform.python_version()}," in image_versions and f"torch {metadata.version('torch')}" in \
            image_versions:
        bundle = another_environments_bundle(bundle, tmp_path / "other.bundle")
    tag = "localhost/nnunet-warmer:ci-refused"
    try:
        built = engine.build(build_context(tmp_path, bundle), tag, "--build-arg", f"WARMER_BUNDLE={bundle.name}")
        assert built.returncode != 0, "the build took a bundle of other software"
        refusals = [line for line in built.stdout.splitlines() + built.stderr.splitlines()
                    if line.startswith("nnunet-warmer: error:")]
        assert len(refusals) == 1 and "another environment" in refusals[0], built.stderr[-3000:]
        assert "--allow-other-environment" in refusals[0] and "Traceback" not in built.stdout + built.stderr
        assert engine("image", "exists", tag).returncode != 0
    finally:
        engine("rmi", "--force", tag)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_default_command_serves_metrics_is_healthy_and_stops_on_sigterm(engine, host, tmp_path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    port, name = free_port(), f"warmer-watch-{os.getpid()}"
    empty = owned_folder(tmp_path / "preprocessed")
    started = engine("run", "-d", "--name", name, "--health-interval", "disable", "-p", f"127.0.0.1:{port}:9464",
                     "-v", f"{empty}:/data/nnUNet_preprocessed", "-v", f"{owned_folder(tmp_path / 'cache')}:/cache",
                     IMAGE)
    try:
        assert started.returncode == 0, started.stderr
        families: list = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    families = list(text_string_to_metric_families(response.read().decode()))
                if any(f.name == "nnunet_warmer_watch_last_pass_timestamp_seconds" and f.samples[0].value > 0
                       for f in families):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert any(f.name == "nnunet_warmer_watch_targets" for f in families), engine("logs", name).stderr
        health = engine("healthcheck", "run", name)
        assert health.returncode == 0, health.stdout + health.stderr
        start = time.monotonic()
        stopped = engine("stop", "--time", "10", name)
        seconds = time.monotonic() - start
        assert stopped.returncode == 0, stopped.stderr
        code = engine("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip()
        assert code == "0" and seconds < 10, f"exit {code} after {seconds:.1f} s: {engine('logs', name).stderr}"
        print(f"podman stop: exit 0 after {seconds:.2f} s")
    finally:
        engine("rm", "--force", "--time", "0", name)


def test_a_world_writable_mounted_cache_is_refused_in_one_line(engine, host, tmp_path) -> None:
    cache = owned_folder(tmp_path / "open-cache")
    os.chmod(cache, 0o777)
    result = engine.run(*host.mounts(cache), IMAGE, "status", *target_args("2d"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "world-writable" in lines[0] and "--allow-untrusted-cache" in lines[0], lines[0]
    assert ownership(cache) == (USER, USER, oct(0o40777)), "the container changed the mounted cache dir"


@pytest.fixture(autouse=True, scope="module")
def no_container_left(engine) -> Iterator[None]:
    yield
    left = engine("ps", "--all", "--format", "{{.Names}}").stdout.split()
    assert not left, f"containers left behind: {left}"
