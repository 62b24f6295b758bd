"""`ls`: every manifest of a real warmed cache, with sizes that add up to what is on disk and last use from the
ledger's `run` records."""

from __future__ import annotations

import json
import shutil
import time

from warmer.cache.layout import CacheDir
from warmer.ledger import records

from .helpers import CPU_TRAINER, cli, job_env


def test_ls_lists_every_manifest_with_sizes_and_last_use(planned, concurrently_warmed, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(concurrently_warmed[0], cache)
    env = job_env(planned)
    result = cli("ls", "--cache-dir", str(cache), "--json", env=env)
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    manifests = sorted(str(p) for p in (cache / "manifests").rglob("*.json"))
    assert sorted(t["manifest"] for t in listing["targets"]) == manifests and len(manifests) == 1
    (target,) = listing["targets"]
    entries = json.loads(next((cache / "manifests").rglob("*.json")).read_text())["entries"]
    assert target["closure_bytes"] == sum((cache / relative).stat().st_size for relative in entries) > 0
    on_disk = sum(p.stat().st_size for p in (cache / "inductor").rglob("*") if p.is_file() and "locks" not in p.parts)
    assert target["closure_bytes"] + listing["unlisted_bytes"] == listing["cache_bytes"] <= on_disk
    assert (target["here"], target["gpu"], target["last_used"], target["shared_bytes"]) == ("usable", "cpu", None, 0)

    used_at = time.time() - 3 * 86400
    records.append(CacheDir(cache), {"kind": "run", "dataset": "Dataset990_WarmerDemo", "plans": "nnUNetPlans",
                                     "configuration": "2d", "trainer": CPU_TRAINER, "gpu_name": ""})
    ledger = next((cache / "ledger").glob("*.jsonl"))
    record = json.loads(ledger.read_text().splitlines()[-1])
    ledger.write_text(ledger.read_text().replace(str(record["time"]), str(used_at)))
    text = cli("ls", "--cache-dir", str(cache), "--sort", "last-used", env=env)
    assert text.returncode == 0 and "3 d ago" in text.stdout and "1 target(s)" in text.stdout, text.stdout
    assert json.loads(cli("ls", "--cache-dir", str(cache), "--json", env=env).stdout)["targets"][0]["last_used"] \
        == used_at


def test_ls_of_a_missing_cache_is_a_one_line_error(tmp_path):
    result = cli("ls", "--cache-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
