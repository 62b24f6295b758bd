"""`watch`, the service: it finds plans as they appear and change, warms what is not warm with nothing else run,
skips unreadable plans with one report, backs off a failing warm, and stops on SIGTERM within seconds leaving no
replay, no temp file and nothing damaged. Also: every systemd unit passes `systemd-analyze verify`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from warmer.cli import main
from warmer.pipeline.warm import free_local_port
from warmer.service.metrics import ServiceMetrics

from .helpers import BIN, CPU_TRAINER, cli, job_env, target_args

pytestmark = pytest.mark.e2e
UNITS = Path(__file__).parent.parent / "systemd"


class Service:
    """`nnunet-warmer watch` in the background, its stderr lines collected with the time each arrived."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen([str(BIN / "nnunet-warmer"), "watch", *args], env={**os.environ, **env},
                                        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append((time.monotonic(), line.rstrip()))

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_for(self, pattern: str, timeout: float, after: int = 0) -> int:
        """The index of the first line from `after` on that matches; fails on timeout or if the service died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, (_, line) in enumerate(self.lines[after:], after):
                if re.search(pattern, line):
                    return index
            assert self.process.poll() is None, f"watch exited {self.process.returncode}:\n{self.text()[-4000:]}"
            time.sleep(0.3)
        raise AssertionError(f"no line matching {pattern!r} within {timeout:.0f} s:\n{self.text()[-4000:]}")

    def stop(self, timeout: float = 10) -> float:
        """SIGTERM; the seconds until it exited (it must exit 0)."""
        start = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        elapsed = time.monotonic() - start
        self.reader.join(timeout=5)
        assert code == 0, self.text()[-4000:]
        return elapsed

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def watch_args(cache: Path, *extra: str) -> list[str]:
    return ["-c", "2d", "-tr", CPU_TRAINER, "--device", "cpu", "--cache-dir", str(cache), "--interval", "1", *extra]


def processes_using(cache: Path) -> list[int]:
    """Processes whose environment points torch at this cache: the warmer's replays and their compile workers."""
    marker = f"={cache}/inductor".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def status_code(cache: Path, env: dict[str, str]) -> int:
    return cli("status", *target_args("2d", cache=cache), env=env).returncode


def test_plans_that_appear_and_change_are_warmed_and_broken_plans_are_skipped(planned, concurrently_warmed,
                                                                             tmp_path):
    source = planned.preprocessed / "Dataset990_WarmerDemo"
    root = tmp_path / "preprocessed"
    root.mkdir()
    cache = tmp_path / "cache"
    # The graphs of the planned 2d target are in this copy, its manifests are not: the target is cold, and its
    # warm replays nnU-Net and verifies from a fresh process without compiling it all again.
    shutil.copytree(concurrently_warmed[0], cache)
    shutil.rmtree(cache / "manifests")
    env = job_env(planned, nnUNet_preprocessed=str(root))
    metrics = tmp_path / "watch.prom"
    service = Service(watch_args(cache, "--metrics-file", str(metrics)), env)
    try:
        service.wait_for(r"targets: none found yet", 60)
        assert status_code(cache, env) == 2  # no such dataset yet

        dataset = root / source.name
        dataset.mkdir()
        shutil.copy(source / "dataset.json", dataset)
        shutil.copy(source / "nnUNetPlans.json", dataset)
        found = service.wait_for(r"Dataset990_WarmerDemo: plans found", 30)
        service.wait_for(r"^targets: 1 warm$", 600, after=found)
        assert status_code(cache, env) == 0

        plans = json.loads((dataset / "nnUNetPlans.json").read_text())
        plans["configurations"]["2d"]["batch_size"] = 7
        (dataset / "nnUNetPlans.json").write_text(json.dumps(plans, indent=1))
        changed = service.wait_for(r"Dataset990_WarmerDemo: plans changed", 30)
        service.wait_for(r"2d/nnUNetTrainerCPUCompile_2it: stale; warming", 30, after=changed)
        warmed = service.wait_for(r"^targets: 1 warm$", 900, after=changed)
        assert status_code(cache, env) == 0
        status = json.loads(cli("status", *target_args("2d", cache=cache), "--json", env=env).stdout)
        assert status["targets"][0]["target"]["batch_per_rank"] == 7

        broken = root / "Dataset991_Broken"
        broken.mkdir()
        shutil.copy(source / "dataset.json", broken)
        (broken / "nnUNetPlans.json").write_text("{not json")
        service.wait_for(r"Dataset991_Broken: skipped: plans file .* is not valid JSON", 30, after=warmed)
        time.sleep(4)  # four more passes
        assert service.text().count("Dataset991_Broken: skipped") == 1
        assert service.process.poll() is None and status_code(cache, env) == 0
        exported = metrics.read_text()
        assert 'nnunet_warmer_watch_targets{state="warm"} 1.0' in exported
        assert "nnunet_warmer_watch_datasets_unreadable 1.0" in exported
        assert 'nnunet_warmer_watch_warms_total{outcome="done"} 2.0' in exported
        service.stop()
    finally:
        service.kill()
        (tmp_path / "watch.log").write_text(service.text())  # docs/service.md quotes it


def test_sigterm_during_a_compile_stops_cleanly_and_a_restart_completes_the_warm(planned, tmp_path):
    cache = tmp_path / "cache"
    env = job_env(planned)
    service = Service(watch_args(cache, "-d", "990"), env)
    try:
        service.wait_for(r"compile: train_step", 300)
        deadline = time.monotonic() + 300
        while not any(p.is_file() for p in (cache / "inductor").rglob("*")):  # mid-compile, some graphs written
            assert time.monotonic() < deadline, service.text()
            time.sleep(0.2)
        assert processes_using(cache)
        assert service.stop() < 10
    finally:
        service.kill()
    assert "stopped on SIGTERM" in service.text()
    deadline = time.monotonic() + 5  # killed processes go as soon as the kernel reaps them
    while processes_using(cache) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_using(cache) == []
    assert list(cache.rglob("*.tmp")) == [] and not (cache / "manifests").exists()
    check = cli("check", "--cache-dir", str(cache), env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert status_code(cache, env) == 1  # cold: nothing was published

    service = Service(watch_args(cache, "-d", "990"), env)
    try:
        service.wait_for(r"^targets: 1 warm$", 900)
        service.stop()
    finally:
        service.kill()
    assert status_code(cache, env) == 0


def test_a_warm_that_keeps_failing_is_retried_later_and_later(planned, tmp_path):
    env = job_env(planned)
    port = free_local_port()
    args = ["-d", "990", "-c", "2d", "-tr", "nnUNetTrainerTestFailsOnNode", "--device", "cpu", "--cache-dir",
            str(tmp_path / "cache"), "--interval", "0.2", "--retry-base", "1", "--metrics-port", str(port)]
    service = Service(args, env)
    try:
        service.wait_for(r"retry 3 in", 240)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            exported = response.read().decode()
        failed = re.search(r'nnunet_warmer_watch_warms_total\{outcome="failed"\} (\S+)', exported)
        assert failed and float(failed.group(1)) >= 3, exported
        assert 'nnunet_warmer_watch_targets{state="cold"} 1.0' in exported
        service.stop()
    finally:
        service.kill()
    failures = [(t, line) for t, line in service.lines if "warm failed" in line]
    attempts = [t for t, line in service.lines if line.endswith("cold; warming")]
    assert all("simulated node failure" in line for _, line in failures), failures
    delays = [int(re.search(r"retry \d+ in (\d+) s", line).group(1)) for _, line in failures[:3]]
    assert delays == [1, 2, 4], failures
    for (failed_at, _), next_attempt, delay in zip(failures, attempts[1:], delays, strict=False):
        assert next_attempt - failed_at >= delay - 0.3, (failed_at, next_attempt, delay)


def test_new_software_on_disk_makes_it_re_execute_itself(planned, tmp_path):
    """A package upgraded under the running service (here: a newer nnunet-warmer's metadata put first on its
    path) is seen at the next pass; the process re-executes in place and goes on."""
    shadow, root = tmp_path / "shadow", tmp_path / "preprocessed"
    shadow.mkdir()
    root.mkdir()
    env = job_env(planned, nnUNet_preprocessed=str(root), PYTHONPATH=str(shadow))
    service = Service(["--cache-dir", str(tmp_path / "cache"), "--interval", "0.5"], env)
    try:
        first = service.wait_for(r"targets: none found yet", 60)
        upgrade = shadow / "nnunet_warmer-99.0.dist-info"
        upgrade.mkdir()
        (upgrade / "METADATA").write_text("Metadata-Version: 2.1\nName: nnunet-warmer\nVersion: 99.0\n")
        changed = service.wait_for(r"software changed on disk \(nnunet-warmer .* -> 99\.0\): re-executing", 30,
                                   after=first)
        service.wait_for(r"^watching ", 60, after=changed)
        service.wait_for(r"targets: none found yet", 60, after=changed)
        time.sleep(2)
        assert service.text().count("software changed on disk") == 1  # the new process starts from 99.0
        service.stop()
    finally:
        service.kill()


def test_every_systemd_unit_verifies(tmp_path):
    if shutil.which("systemd-analyze") is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: .ci/run installs Debian's systemd package")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    units = sorted(p for p in UNITS.iterdir() if p.suffix in (".service", ".timer"))
    assert {p.name for p in units} >= {"nnunet-warmer-watch.service", "nnunet-warmer@.service",
                                       "nnunet-warmer@.timer", "nnunet-warmer-gc.service", "nnunet-warmer-gc.timer"}
    # The units name the documented install prefix; systemd-analyze checks that ExecStart exists, so the copies
    # verified here point at this test's install instead.
    for unit in units:
        text = unit.read_text()
        assert "/opt/nnunet-warmer/bin/nnunet-warmer" in text or unit.suffix == ".timer"
        (tmp_path / unit.name).write_text(text.replace("/opt/nnunet-warmer/bin/", f"{BIN}/"))
    names = [name.replace("@.", "@4.") for name in sorted(p.name for p in units)]
    result = subprocess.run(["systemd-analyze", "verify", *names], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_metrics_port_opens_only_once_sigterm_is_handled(nnunet_env, tmp_path, monkeypatch, capsys) -> None:
    """As a container's PID 1 the service ignores a SIGTERM it does not handle: the port that tells the world it is
    up opens after the handler is set. A port already taken is one line, before the service says it watches."""
    handlers = []

    def serve(self) -> None:
        handlers.append(signal.getsignal(signal.SIGTERM))
        raise KeyboardInterrupt  # ends the service right there

    with monkeypatch.context() as patched:
        patched.setattr(ServiceMetrics, "serve", serve)
        args = ["watch", "--cache-dir", str(tmp_path / "cache"), "--metrics-port", str(free_local_port())]
        assert main(args) == 130
    assert len(handlers) == 1 and callable(handlers[0]), handlers
    capsys.readouterr()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["watch", "--cache-dir", str(tmp_path / "cache"), "--metrics-port",
                     str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot serve metrics" in err and "--metrics-port" in err, err
