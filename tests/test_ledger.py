"""Ledger and `stats`: concurrent writers lose nothing; stats are the sums of the records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from warmer.cache.layout import CacheDir
from warmer.cli import main
from warmer.ledger import records as ledger

from .helpers import BIN

WRITERS = 8


def test_concurrent_runs_all_land_in_the_ledger(tmp_path: Path) -> None:
    cache = CacheDir(tmp_path / "cache")
    processes = [subprocess.Popen([str(BIN / "nnunet-warmer"), "run", "--cache-dir", str(cache.root), "--",
                                   sys.executable, "-c", f"raise SystemExit({i % 3})"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(WRITERS)]
    assert sorted(p.wait(timeout=300) for p in processes) == sorted(i % 3 for i in range(WRITERS))
    records = list(ledger.records(cache))
    assert len(records) == WRITERS
    assert sorted(r["exit_code"] for r in records) == sorted(i % 3 for i in range(WRITERS))
    lines = [line for f in (cache.root / "ledger").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(lines) == WRITERS and all(json.loads(line)["kind"] == "run" for line in lines)


def _run_record(dataset: str, fx_hit: int, fx_miss: int, compile_seconds: float, saved: float) -> dict:
    return {"kind": "run", "dataset": dataset, "configuration": "3d_fullres", "gpu_name": "NVIDIA H200",
            "fx_hit": fx_hit, "fx_miss": fx_miss, "aot_hit": fx_hit // 2, "aot_miss": 0,
            "compile_seconds": compile_seconds, "estimated_seconds_saved": saved}


def test_stats_are_the_sums_of_the_records(tmp_path: Path, capsys) -> None:
    cache = CacheDir(tmp_path / "cache")
    rows = [_run_record("Dataset001_A", 10, 0, 2.5, 80.0), _run_record("Dataset001_A", 8, 2, 30.0, 52.5),
            _run_record("Dataset002_B", 5, 0, 1.0, 10.0)]
    for row in rows:
        ledger.append(cache, row)
    ledger.append(cache, {"kind": "warm", "dataset": "Dataset001_A", "configuration": "3d_fullres",
                          "gpu_name": "NVIDIA H200", "compile_seconds": 95.0, "fx_miss": 10})
    with open(next((cache.root / "ledger").glob("*.jsonl")), "a") as f:
        f.write('{"torn": ')  # a writer that crashed mid-line
    assert main(["stats", "--cache-dir", str(cache.root), "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)["totals"]
    assert totals["runs"] == 3 and totals["warms"] == 1
    for name in ("fx_hit", "fx_miss", "aot_hit", "aot_miss"):
        assert totals[name] == sum(r[name] for r in rows)
    assert totals["compile_seconds"] == sum(r["compile_seconds"] for r in rows)
    assert totals["estimated_seconds_saved"] == sum(r["estimated_seconds_saved"] for r in rows)
    assert totals["warm_compile_seconds"] == 95.0
    assert totals["fx_hit_rate"] == round(23 / 25, 4)

    assert main(["stats", "--cache-dir", str(cache.root), "--zero"]) == 0
    ledger.append(cache, rows[0])
    capsys.readouterr()
    assert main(["stats", "--cache-dir", str(cache.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["runs"] == 1
    assert main(["stats", "--cache-dir", str(cache.root), "--since", "1970-01-02"]) == 0
    text = capsys.readouterr().out
    assert "Runs / warms recorded" in text and "Dataset001_A/3d_fullres/NVIDIA H200" in text
    assert main(["stats", "--cache-dir", str(cache.root), "--since", "yesterday"]) == 2


def test_read_only_cache_does_not_fail_the_job(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        ledger_dir = tmp_path / "cache" / "ledger"
        ledger_dir.parent.mkdir()
        ledger_dir.write_text("not a directory")  # root ignores permissions; make the append fail another way
    else:
        (tmp_path / "cache").mkdir(mode=0o555)
    result = subprocess.run([str(BIN / "nnunet-warmer"), "run", "--cache-dir", str(tmp_path / "cache"), "--",
                             sys.executable, "-c", "raise SystemExit(4)"], capture_output=True, text=True)
    assert result.returncode == 4
    assert "ledger not written" in result.stderr


def test_metrics_file_parses_with_prometheus_parser(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from warmer.cache.manifest import new_manifest
    from warmer.values.fingerprint import software_fingerprint
    from warmer.values.profiles import JobEnvironment
    from warmer.values.results import ReplayResult
    from warmer.values.targets import Target

    cache = CacheDir(tmp_path / "cache")
    for row in (_run_record("Dataset001_A", 10, 0, 2.5, 80.0), _run_record("Dataset001_A", 8, 2, 30.0, 52.5)):
        ledger.append(cache, row)
    here = software_fingerprint(JobEnvironment.with_profile("default"))
    for configuration, torch_version in (("3d_fullres", here["torch"]), ("2d", "2.0.0")):
        target = Target("Dataset001_A", "nnUNetPlans", configuration, "nnUNetTrainer", "cuda:0", 2)
        new_manifest(cache, target, {**here, "torch": torch_version}, configuration, None,
                     ReplayResult(True, {})).write()
    metrics_file = tmp_path / "nnunet_warmer.prom"
    assert main(["stats", "--cache-dir", str(cache.root), "--metrics-file", str(metrics_file)]) == 0
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics_file.read_text()) for s in family.samples}
    labels = (("configuration", "3d_fullres"), ("dataset", "Dataset001_A"), ("gpu", "NVIDIA H200"))
    assert samples[("nnunet_warmer_fx_hits", labels)] == 18
    assert samples[("nnunet_warmer_fx_misses", labels)] == 2
    assert samples[("nnunet_warmer_estimated_seconds_saved", labels)] == 132.5
    assert samples[("nnunet_warmer_targets", (("state", "warm"),))] == 1
    assert samples[("nnunet_warmer_targets", (("state", "stale"),))] == 1
