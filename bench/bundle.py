"""Bundles: what compression buys, what export and import cost, and whether a training on an imported cache starts
as warm as on the cache it came from.

In one run: the target's closure as a tar compressed by gzip (the standard library) and by zstd (what bundles use)
at a few levels; `export` and `import` timed; then a real `nnUNetv2_train` (fold 0) under `nnunet-warmer run`,
alternating between the original cache and the imported one at another path, wall time and misses of each.
Prints markdown tables; paste them with the date and machine into bench/RESULTS.md.

    python bench/bundle.py --cache-dir DIR -d 990 -c 2d -tr nnUNetTrainerCPUCompile_2it [--repeats 2]

The cache must hold a warm manifest of the target; nnUNet_preprocessed must point at the dataset's plans and
nnUNet_extTrainer at the trainer.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import zstandard

BIN = Path(sys.executable).parent


def closure_tar(cache: Path, configuration: str, trainer: str) -> bytes:
    (manifest,) = [p for p in (cache / "manifests").rglob("*.json") if f"/{configuration}/{trainer}/" in str(p)]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for relative in sorted(json.loads(manifest.read_text())["entries"]):
            tar.add(cache / relative, arcname=relative)
    return buffer.getvalue()


def compression_rows(raw: bytes) -> list[str]:
    rows = []
    for name, compress in (("gzip -6 (stdlib default)", lambda b: gzip.compress(b, compresslevel=6)),
                           ("gzip -9", lambda b: gzip.compress(b, compresslevel=9)),
                           ("zstd -3", zstandard.ZstdCompressor(level=3, threads=-1).compress),
                           ("zstd -10 (bundles)", zstandard.ZstdCompressor(level=10, threads=-1).compress),
                           ("zstd -19", zstandard.ZstdCompressor(level=19, threads=-1).compress)):
        start = time.perf_counter()
        packed = compress(raw)
        seconds = time.perf_counter() - start
        rows.append(f"| {name} | {len(packed) / 1e6:.2f} MB | {len(raw) / len(packed):.1f}x | {seconds:.2f} s |")
    return rows


def timed(command: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command[:3])} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("-d", required=True)
    parser.add_argument("-c", required=True)
    parser.add_argument("-tr", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    env = {**os.environ, "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "1")}
    work = Path(tempfile.mkdtemp(prefix="nnunet-warmer-bench-"))
    warmer = str(BIN / "nnunet-warmer")
    target = ["-d", args.d, "-c", args.c, "-tr", args.tr, "--device", args.device]
    raw = closure_tar(args.cache_dir, args.c, args.tr)
    bundle = work / "target.bundle"
    export_s, _ = timed([warmer, "export", *target, "--cache-dir", str(args.cache_dir), "--to", str(bundle)], env)
    imported = work / "elsewhere" / "cache"
    import_s, _ = timed([warmer, "import", str(bundle), "--cache-dir", str(imported)], env)
    runs: dict[str, list[tuple[float, dict]]] = {"original": [], "imported": []}
    for repeat in range(args.repeats):
        for label, cache in (("original", args.cache_dir), ("imported", imported)):
            summary_file = work / f"{label}-{repeat}.json"
            run_env = {**env, "nnUNet_results": str(work / f"results-{label}-{repeat}")}
            seconds, _ = timed([warmer, "run", "--cache-dir", str(cache), "--json", str(summary_file), "--",
                                str(BIN / "nnUNetv2_train"), args.d, args.c, "0", "-tr", args.tr, "-device",
                                args.device], run_env)
            runs[label].append((seconds, json.loads(summary_file.read_text())))
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {os.cpu_count()} cores; target {args.d} {args.c} "
          f"{args.tr} on {args.device}; closure {len(raw) / 1e6:.1f} MB as tar\n")
    print("| compression of the closure | size | ratio | seconds |")
    print("|---|---|---|---|")
    print("\n".join(compression_rows(raw)))
    print(f"\nexport {export_s:.1f} s -> {bundle.stat().st_size / 1e6:.2f} MB; import into an empty cache dir "
          f"{import_s:.1f} s (both include the CLI's start-up)\n")
    print("| cache | nnUNetv2_train wall (median) | runs | FX hit/miss | AOT hit/miss |")
    print("|---|---|---|---|---|")
    for label, results in runs.items():
        last = results[-1][1]
        print(f"| {label} | {statistics.median(s for s, _ in results):.1f} s | "
              f"{', '.join(f'{s:.1f}' for s, _ in results)} | {last['fx_hit']}/{last['fx_miss']} | "
              f"{last['aot_hit']}/{last['aot_miss']} |")
    ratio = statistics.median(s for s, _ in runs["imported"]) / statistics.median(s for s, _ in runs["original"])
    print(f"\nimported / original wall time = {ratio:.2f}x (goal: at most 1.10x)")
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
