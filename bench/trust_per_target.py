"""What a job's trust check costs in a cache crowded with other targets: `run`'s pre-job work and `status` of one
target, with about 1 GB (16,000 files) of other targets' entries in the cache, against the same target alone.

Side by side in one run, alternating, on local disk and, where `.ci/gluster up` serves a volume, from a simulated
node with its own FUSE mount (tests/nodes.py; root). `run` wraps a stand-in nnUNetv2_train that exits at once, on a
node-local copy staged before the timing starts (what every job after a node's first pays). `env` without a target
still checks the whole cache: its row shows what every job's check cost before it was per target.
The other entries are files of random bytes in torch's layout (FX graph and AOTAutograd key folders, generated code
and kernels in prefix folders), so a whole-cache walk meets as many folders as a real cache of that size.
Prints a markdown table; paste it with the date and machine into bench/RESULTS.md.

    python bench/trust_per_target.py --cache-dir DIR [--repeats 5] [--files 16000] [--megabytes 1000]

The cache must hold a warm Dataset990 2d manifest of nnUNetTrainerCPUCompile_2it; nnUNet_preprocessed must point at
the dataset's plans (the demo's or the tests' work folders hold both).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.nodes import HOST_MOUNT, NODE_MOUNT, Node, gluster_up  # noqa: E402
from warmer.demo import CPU_TRAINERS_DIR  # noqa: E402

BIN = Path(sys.executable).parent
TRAINER = "nnUNetTrainerCPUCompile_2it"
WARMER = str(BIN / "nnunet-warmer")


def target_alone(source: Path, destination: Path) -> int:
    """The 2d target's manifest and the files it lists, copied from `source`; how many files that is."""
    (manifest,) = [p for p in (source / "manifests").rglob("*.json") if f"/2d/{TRAINER}/" in str(p)]
    files = [manifest.relative_to(source), *map(Path, json.loads(manifest.read_text())["entries"])]
    for relative in files:
        (destination / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / relative, destination / relative)
    return len(files)


def add_other_targets(cache: Path, files: int, megabytes: int, seed: int = 0) -> None:
    """`files` entries of other targets, `megabytes` in all, spread as torch lays out its cache."""
    rng = random.Random(seed)
    size = megabytes * 1_000_000 // files
    block = os.urandom(size)
    for index in range(files):
        name = f"{rng.getrandbits(128):032x}"
        kind = index % 4
        relative = {0: f"inductor/fxgraph/{name[:2]}/f{name}/{name[2:12]}",
                    1: f"inductor/aotautograd/a{name}/entry",
                    2: f"inductor/{name[:2]}/c{name}.py",
                    3: f"inductor/{name[:2]}/c{name}.so"}[kind]
        path = cache / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(block)


def timed(runner: Callable[[list[str]], subprocess.CompletedProcess], argv: list[str], into: list[float]) -> None:
    """Append the seconds `argv` took to `into`."""
    start = time.perf_counter()
    result = runner(argv)
    into.append(time.perf_counter() - start)
    if result.returncode not in (0, 1):  # status exits 1 for a target that is not warm here; anything else is wrong
        raise SystemExit(f"{result.args}: exit {result.returncode}\n{result.stderr[-2000:]}")


def measure(where: str, caches: dict[str, str], tmp: str, runner: Callable[[list[str]], subprocess.CompletedProcess],
            repeats: int, times: dict[tuple[str, str, str], list[float]]) -> None:
    """Time each command on each cache, alternating, `repeats` times."""
    stand_in = [f"{tmp}/bin/nnUNetv2_train", "990", "2d", "0", "-tr", TRAINER, "-device", "cpu"]
    commands = {
        "run's pre-job work (node-local copy)": lambda cache, label: [
            WARMER, "run", "--cache-dir", cache, "--scratch", f"{tmp}/scratch-{label}", "--", *stand_in],
        "status": lambda cache, label: [WARMER, "status", "-d", "990", "-c", "2d", "-tr", TRAINER, "--device", "cpu",
                                        "--cache-dir", cache],
        "env without a target (whole cache)": lambda cache, label: [WARMER, "env", "--cache-dir", cache],
    }
    for label, cache in caches.items():  # stage each node-local copy once: the timed jobs reuse it
        runner(commands["run's pre-job work (node-local copy)"](cache, label))
    for _ in range(repeats):
        for name, command in commands.items():
            for label, cache in caches.items():
                timed(runner, command(cache, label), times.setdefault((where, name, label), []))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--files", type=int, default=16_000)
    parser.add_argument("--megabytes", type=int, default=1000)
    args = parser.parse_args()
    env = {**os.environ, "nnUNet_extTrainer": str(CPU_TRAINERS_DIR)}
    times: dict[tuple[str, str, str], list[float]] = {}
    closure = 0

    def prepare(folder: Path) -> None:
        nonlocal closure
        closure = target_alone(args.cache_dir, folder / "alone")
        target_alone(args.cache_dir, folder / "crowded")
        add_other_targets(folder / "crowded", args.files, args.megabytes)
        stand_in = folder / "bin" / "nnUNetv2_train"
        stand_in.parent.mkdir(parents=True)
        stand_in.write_text("#!/bin/sh\nexit 0\n")
        stand_in.chmod(0o755)

    local = Path(tempfile.mkdtemp(prefix="nnunet-warmer-bench-"))
    try:
        prepare(local)
        measure("local disk", {"alone": str(local / "alone"), "crowded": str(local / "crowded")}, str(local),
                lambda argv: subprocess.run(argv, env=env, capture_output=True, text=True), args.repeats, times)
    finally:
        shutil.rmtree(local)
    if gluster_up():
        work = HOST_MOUNT / f"bench-trust-{os.getpid()}"
        node = Node("bench")
        try:
            prepare(work)
            shutil.copytree(os.environ["nnUNet_preprocessed"], work / "preprocessed")
            node_env = {**env, "nnUNet_preprocessed": str(NODE_MOUNT / work.name / "preprocessed"), "TMPDIR": "/tmp",
                        "HOME": "/tmp"}
            shared = NODE_MOUNT / work.name
            shutil.copytree(work / "bin", node.tmp / "bin")
            measure("GlusterFS (FUSE, default options)",
                    {"alone": str(shared / "alone"), "crowded": str(shared / "crowded")}, "/tmp",
                    lambda argv: node.run(argv, node_env), args.repeats, times)
        finally:
            node.stop()
            shutil.rmtree(work, ignore_errors=True)

    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {os.cpu_count()} cores; the target: Dataset990 2d, "
          f"{closure} files (its manifest and closure); other targets' entries: {args.files} files, "
          f"{args.megabytes} MB; median of {args.repeats}\n")
    print("| where | command | target alone (s) | with the other entries (s) | ratio |")
    print("|---|---|---|---|---|")
    for (where, name, label), values in times.items():
        if label == "alone":
            crowded = statistics.median(times[(where, name, "crowded")])
            alone = statistics.median(values)
            print(f"| {where} | {name} | {alone:.3f} | {crowded:.3f} | {crowded / alone:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
