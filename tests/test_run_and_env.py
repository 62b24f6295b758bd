"""`env` and `run`: the environment a job needs, exit codes kept, counters from every Python process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from warmer.cache.layout import CacheDir

from .helpers import cli

SPAWNING_SCRIPT = """
import multiprocessing
import torch

def work(_):
    return float(torch.compile(lambda x: x * 2 + 1)(torch.ones(4)).sum())

if __name__ == "__main__":
    work(0)
    child = multiprocessing.get_context("spawn").Process(target=work, args=(0,))  # as torch's mp.spawn (DDP)
    child.start()
    child.join()
    raise SystemExit(3)
"""


def test_env_exports_point_torch_at_the_cache(tmp_path: Path) -> None:
    result = cli("env", "--cache-dir", str(tmp_path / "shared dir"), "--cpu-trainers")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert f"export TORCHINDUCTOR_CACHE_DIR='{tmp_path}/shared dir/inductor'" in lines
    assert "export TORCHINDUCTOR_FX_GRAPH_CACHE=1" in lines and "export TORCHINDUCTOR_AUTOGRAD_CACHE=1" in lines
    assert any(line.startswith("export nnUNet_extTrainer=") for line in lines)
    warning = result.stderr.strip().splitlines()
    assert len(warning) == 1 and f"cache dir {tmp_path}/shared dir does not exist" in warning[0], result.stderr
    assert not (tmp_path / "shared dir").exists()
    existing = cli("env", "--cache-dir", str(tmp_path), "--json")
    assert existing.stderr == "" and json.loads(existing.stdout) == CacheDir(tmp_path).torch_environment()


def test_run_keeps_exit_code_and_counts_spawned_children(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(SPAWNING_SCRIPT)
    summary_file = tmp_path / "summary.json"
    cache = tmp_path / "cache"
    result = cli("run", "--cache-dir", str(cache), "--json", str(summary_file), "--", sys.executable, str(script))
    assert result.returncode == 3
    summary = json.loads(summary_file.read_text())
    assert summary["exit_code"] == 3
    compiled = [p for p in summary["per_process"] if p["frames"] > 0]
    assert len(compiled) == 2, summary["per_process"]  # the parent and its spawn child
    assert summary["fx_miss"] + summary["fx_hit"] >= 2
    assert (cache / "inductor").is_dir()
    second = cli("run", "--cache-dir", str(cache), "--json", str(summary_file), "--", sys.executable, str(script))
    assert second.returncode == 3
    assert json.loads(summary_file.read_text())["fx_miss"] == 0


SHAPES_SCRIPT = """
import json, sys
import torch
import torch._dynamo.config as config

f = torch.compile(lambda x: (x * 2).sum())
for n in (4, 6, 8):
    f(torch.ones(n))
print(json.dumps({"recompile_limit": config.recompile_limit, "automatic": config.automatic_dynamic_shapes}))
"""


def test_static_profile_reaches_the_training_process(tmp_path: Path) -> None:
    """`env --shapes static` exports, and `run --shapes static` installs, dynamo settings in the job's process:
    the recompile limit has no variable, the hook sets it after the job imports torch."""
    script = tmp_path / "job.py"
    script.write_text(SHAPES_SCRIPT)
    exported = json.loads(cli("env", "--shapes", "static", "--cache-dir", str(tmp_path), "--json").stdout)
    plain = subprocess.run([sys.executable, str(script)], env={**os.environ, **exported}, capture_output=True,
                           text=True, check=True)
    assert json.loads(plain.stdout.splitlines()[-1]) == {"recompile_limit": 64, "automatic": False}

    summaries = {}
    for profile in ("default", "static"):
        summary_file = tmp_path / f"{profile}.json"
        result = cli("run", "--shapes", profile, "--cache-dir", str(tmp_path / profile), "--json",
                     str(summary_file), "--", sys.executable, str(script))
        assert result.returncode == 0, result.stderr[-2000:]
        summaries[profile] = json.loads(summary_file.read_text())
    assert summaries["default"]["symbols"] > 0 and summaries["default"]["fx_miss"] == 2  # static, then symbolic
    assert summaries["static"]["symbols"] == 0 and summaries["static"]["fx_miss"] == 3  # one graph per shape


def test_run_reports_a_command_killed_by_a_signal_as_128_plus_n(tmp_path: Path) -> None:
    """What shells and schedulers record (137 is the OOM killer's SIGKILL), not Python's negative code."""
    cache = tmp_path / "cache"
    for command, code in (("kill -9 $$", 137), ("kill -15 $$", 143), ("exit 3", 3), ("exit 0", 0)):
        result = cli("run", "--cache-dir", str(cache), "--", "sh", "-c", command)
        assert result.returncode == code, (command, result.returncode, result.stderr)
