"""Reading the cache over a network file system, side by side in one run, on GlusterFS with default mount options.

Three ways of reading a warm cache, from a simulated node with its own FUSE mount and its own /tmp (tests/nodes.py;
`.ci/gluster up` serves the volume; root):
- the shared cache read in place on the network file system (`run --in-place`);
- a node-local copy of the target's closure (`run`, the default): once staged afresh (the first job of the target on
  the node pays the copy), once reused (the next job);
- a cache on local disk (`run --in-place` on a copy in the node's /tmp).
For each, a real short nnUNetv2_train: the first epoch as nnU-Net reports it ("Epoch time": 2 iterations and the
validation, where the job loads its compiled graphs) and the whole run's wall time. Then what staging costs (seconds
and bytes, from `run`'s line), and the gate every job runs: `status` and `run`'s pre-job work (a stand-in
nnUNetv2_train that exits at once; afresh staged each time), on the network file system against local disk.
Prints markdown tables; paste them with the date and machine into bench/RESULTS.md.

    python bench/shared_storage.py --cache-dir DIR [--repeats 2]

The cache must hold a warm Dataset990 2d manifest of nnUNetTrainerCPUCompile_2it; nnUNet_preprocessed must point at
the dataset's plans (the demo's or the tests' work folders hold both).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.nodes import HOST_MOUNT, NODE_MOUNT, Node, gluster_up  # noqa: E402
from warmer.demo import CPU_TRAINERS_DIR  # noqa: E402

BIN = Path(sys.executable).parent
TRAINER = "nnUNetTrainerCPUCompile_2it"
TARGET = ["-d", "990", "-c", "2d", "-tr", TRAINER, "--device", "cpu"]
TRAIN = [str(BIN / "nnUNetv2_train"), "990", "2d", "0", "-tr", TRAINER, "-device", "cpu"]
EPOCH_TIME = re.compile(r"Epoch time: ([\d.]+) s")
STAGED = re.compile(r"(\d+) files \(([\d.]+) MB\) copied and checked in ([\d.]+) s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not gluster_up():
        print("no GlusterFS volume mounted: run `.ci/gluster up` first (root)", file=sys.stderr)
        return 2
    work = HOST_MOUNT / f"bench-{os.getpid()}"
    shutil.copytree(args.cache_dir, work / "cache")
    shutil.copytree(os.environ["nnUNet_preprocessed"], work / "preprocessed")
    node = Node("bench")
    try:
        shutil.copytree(args.cache_dir, node.tmp / "cache-local")
        env = {**os.environ, "nnUNet_preprocessed": str(NODE_MOUNT / work.name / "preprocessed"),
               "nnUNet_results": "/tmp/results", "TMPDIR": "/tmp", "HOME": "/tmp",
               "nnUNet_extTrainer": str(CPU_TRAINERS_DIR)}
        shared, local = str(NODE_MOUNT / work.name / "cache"), "/tmp/cache-local"
        ways = {
            "network FS, in place": ["--in-place", "--cache-dir", shared],
            "network FS, node-local copy staged afresh": ["--cache-dir", shared, "--scratch", "/tmp/fresh-{i}"],
            "network FS, node-local copy reused": ["--cache-dir", shared, "--scratch", "/tmp/reused"],
            "local disk, in place": ["--in-place", "--cache-dir", local],
        }
        stand_in = node.tmp / "bin" / "nnUNetv2_train"  # a train command that exits at once: `run` alone
        stand_in.parent.mkdir()
        stand_in.write_text("#!/bin/sh\nexit 0\n")
        stand_in.chmod(0o755)
        stand_in_train = ["/tmp/bin/nnUNetv2_train", *TRAIN[1:]]
        node.run([str(BIN / "nnunet-warmer"), "run", *ways["network FS, node-local copy reused"], "--",
                  *stand_in_train], env)  # stages the copy the "reused" runs find
        results: dict[str, list[dict[str, float]]] = {way: [] for way in ways}
        for i in range(args.repeats):
            for way, options in ways.items():
                options = [o.format(i=i) for o in options]
                result = node.run([str(BIN / "nnunet-warmer"), "run", *options, "--json", "/tmp/run.json", "--",
                                   *TRAIN], env)
                if result.returncode != 0:
                    print(result.stderr[-3000:], file=sys.stderr)
                    return 1
                summary = json.loads((node.tmp / "run.json").read_text())
                epoch = EPOCH_TIME.search(result.stdout)
                staged = STAGED.search(result.stderr)
                results[way].append({"epoch": float(epoch.group(1)) if epoch else float("nan"),
                                     "wall": summary["wall_seconds"], "misses": summary["fx_miss"] +
                                     summary["aot_miss"],
                                     "staged_files": float(staged.group(1)) if staged else 0.0,
                                     "staged_mb": float(staged.group(2)) if staged else 0.0,
                                     "staged_s": float(staged.group(3)) if staged else 0.0})
        gates: dict[str, list[float]] = {}
        for i in range(3 * args.repeats):
            for name, command in {
                "status, network FS": ["status", *TARGET, "--cache-dir", shared],
                "status, local disk": ["status", *TARGET, "--cache-dir", local],
                "run's pre-job work, node-local copy staged afresh from the network FS":
                    ["run", "--cache-dir", shared, "--scratch", f"/tmp/gate-{i}", "--", *stand_in_train],
                "run's pre-job work, in place on the network FS":
                    ["run", "--in-place", "--cache-dir", shared, "--", *stand_in_train],
                "run's pre-job work, in place on local disk":
                    ["run", "--in-place", "--cache-dir", local, "--", *stand_in_train],
            }.items():
                start = time.perf_counter()
                node.run([str(BIN / "nnunet-warmer"), *command], env)
                gates.setdefault(name, []).append(time.perf_counter() - start)
    finally:
        node.stop()
        shutil.rmtree(work, ignore_errors=True)

    import torch

    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"GlusterFS FUSE mount with default options; median of {args.repeats}\n")
    print("| way of reading the cache | first epoch (s) | whole run (s) | misses | staged |")
    print("|---|---|---|---|---|")
    for way, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        staged = (f"{med['staged_files']:.0f} files, {med['staged_mb']:.1f} MB in {med['staged_s']:.2f} s"
                  if "node-local" in way else "")
        print(f"| {way} | {med['epoch']:.1f} | {med['wall']:.1f} | {med['misses']:.0f} | {staged} |")
    print(f"\n| gate (median of {3 * args.repeats}) | seconds |")
    print("|---|---|")
    for name, times in gates.items():
        print(f"| {name} | {statistics.median(times):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
