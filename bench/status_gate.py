"""What the gate of every job costs: `status` and `run`'s pre-job check of one target in a cache shared by many.

Side by side in one run, alternating, on the same cache: the target's manifest as `warm` writes it (its closure,
format 2) and the same manifest rewritten to list every file of the cache (format 1, as manifests were before
closures). `run` wraps a stand-in `nnUNetv2_train` that exits at once, so only the warmer's own work is timed:
start-up, the trust check, the checksums of the manifest's entries, the ledger line.
Prints a markdown table; paste it with the date and machine into bench/RESULTS.md.

    python bench/status_gate.py --cache-dir DIR -d 990 -c 2d -tr nnUNetTrainerCPUCompile_2it [--repeats 3]

The cache must hold a warm manifest of the target; nnUNet_preprocessed must point at the dataset's plans.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from warmer.cache.checksums import cache_entries, digest
from warmer.cache.layout import CacheDir

BIN = Path(sys.executable).parent


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("-d", required=True)
    parser.add_argument("-c", required=True)
    parser.add_argument("-tr", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nnunet-warmer-bench-"))
    cache = work / "cache"
    shutil.copytree(args.cache_dir, cache)
    (path,) = [p for p in (cache / "manifests").rglob("*.json") if f"/{args.c}/{args.tr}/" in str(p)]
    closure = json.loads(path.read_text())
    whole = {**closure, "manifest_version": 1,
             "entries": {relative: digest(cache / relative) for relative in cache_entries(CacheDir(cache))}}
    stand_in = work / "bin" / "nnUNetv2_train"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    status = [str(BIN / "nnunet-warmer"), "status", "-d", args.d, "-c", args.c, "-tr", args.tr, "--device",
              args.device, "--cache-dir", str(cache)]
    run = [str(BIN / "nnunet-warmer"), "run", "--cache-dir", str(cache), "--", str(stand_in), args.d, args.c, "0",
           "-tr", args.tr, "-device", args.device]
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for label, manifest in (("closure (format 2)", closure), ("whole cache (format 1)", whole)):
            path.write_text(json.dumps(manifest))
            for command_label, command in (("status", status), ("run pre-job check", run)):
                times.setdefault((command_label, label), []).append(timed(command))
    files = len(cache_entries(CacheDir(cache)))
    size = sum(p.stat().st_size for p in (cache / "inductor").rglob("*") if p.is_file())
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {os.cpu_count()} cores; cache {size / 1e6:.1f} MB in "
          f"{files} entries; the target's closure: {len(closure['entries'])} files; median of {args.repeats}\n")
    print("| command | manifest lists | seconds |")
    print("|---|---|---|")
    for (command_label, label), values in times.items():
        print(f"| {command_label} | {label} | {statistics.median(values):.2f} |")
    for command_label in ("status", "run pre-job check"):
        ratio = statistics.median(times[(command_label, "whole cache (format 1)")]) / statistics.median(
            times[(command_label, "closure (format 2)")])
        print(f"\n{command_label}: whole cache / closure = {ratio:.2f}x")
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
