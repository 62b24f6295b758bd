"""What checking a fleet's cache costs: 300 targets, before and after the checks that cost what changed (issue 27).

Side by side in one run, alternating, on local disk and, where `.ci/gluster up` serves a volume, from a simulated
node with its own FUSE mount (tests/nodes.py; root): one idle `watch` pass (its time and the bytes its process read,
rchar of /proc/self/io: every byte read() returned, file content and /proc alike), `status` of one target with 300
targets in the cache against the same target alone, `ls` and `gc --dry-run` at 300 targets, and `check`.
"Before" is the code of a git revision (default: the parent of the commit that added the index), checked out into a
worktree under /var/tmp; "after" is this checkout. Each process imports the warmer of its working directory.

The fleet, synthesized from one real warm target (Dataset990 2d of nnUNetTrainerCPUCompile_2it):
- 300 datasets, Dataset100..Dataset399, each with Dataset990's plans (its name changed) and dataset.json; `watch`
  and `status` look at their 2d configuration, so each is one target;
- each target's manifest is the real 2d manifest with its dataset changed, listing its own copies of the real
  closure's first files by path (about 1.5 MB: FX graph, AOTAutograd and kernel entries), under torch's layout with
  each second-level folder suffixed by the target's number; so closures are distinct files of real entries, and
  every target is warm for this host.
Prints a markdown table; paste it with the date and machine into bench/RESULTS.md.

    python bench/fleet_checks.py --cache-dir DIR [--targets 300] [--repeats 3] [--before REV]

The cache must hold a warm Dataset990 2d manifest of nnUNetTrainerCPUCompile_2it; nnUNet_preprocessed must point at
the dataset's plans (the demo's or the tests' work folders hold both).
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
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.nodes import HOST_MOUNT, NODE_MOUNT, Node, gluster_up  # noqa: E402

TRAINER = "nnUNetTrainerCPUCompile_2it"
CLOSURE_BYTES = 1_500_000
WATCH_PASS = """
import json, sys, time
from pathlib import Path
from warmer.cache.layout import CacheDir
from warmer.cache.locking import LockPolicy
from warmer.service.watch import Watcher, WatchRequest
from warmer.values.profiles import JobEnvironment

def rchar():
    with open("/proc/self/io") as f:
        return int(next(line.split()[1] for line in f if line.startswith("rchar")))

request = WatchRequest((), ("2d",), "nnUNetPlans", sys.argv[2], "cpu", 60, 60, 3600, LockPolicy())
watcher = Watcher(request, CacheDir(Path(sys.argv[1])), JobEnvironment.with_profile("default"), lambda m: None, None)
first = watcher.run_pass()
read, start = rchar(), time.perf_counter()
second = watcher.run_pass()
print(json.dumps({"seconds": time.perf_counter() - start, "bytes": rchar() - read, "first": first,
                  "second": second}))
"""


def fleet(source_cache: Path, preprocessed: Path, into: Path, targets: int) -> tuple[Path, Path, Path]:
    """Make the fleet's preprocessed folder and cache, and a cache of its first target alone."""
    (manifest_path,) = [p for p in (source_cache / "manifests").rglob("*.json") if f"/2d/{TRAINER}/" in str(p)]
    manifest = json.loads(manifest_path.read_text())
    chosen, total = {}, 0
    for relative, checksum in sorted(manifest["entries"].items()):
        if total + int(checksum.split(":")[0]) <= CLOSURE_BYTES:
            chosen[relative] = checksum
            total += int(checksum.split(":")[0])
    source_dataset = preprocessed / "Dataset990_WarmerDemo"
    plans = json.loads((source_dataset / "nnUNetPlans.json").read_text())
    fleet_preprocessed, fleet_cache, alone = into / "preprocessed", into / "cache", into / "alone"
    for n in range(targets):
        name = f"Dataset{100 + n:03d}_Fleet{n:03d}"
        folder = fleet_preprocessed / name
        folder.mkdir(parents=True)
        (folder / "nnUNetPlans.json").write_text(json.dumps({**plans, "dataset_name": name}))
        shutil.copy(source_dataset / "dataset.json", folder)
        entries = {}
        for relative, checksum in chosen.items():
            parts = relative.split("/")
            parts[2] = f"{parts[2]}-t{n:03d}"
            mine = "/".join(parts)
            entries[mine] = checksum
            for cache in [fleet_cache, *([alone] if n == 0 else [])]:
                (cache / mine).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source_cache / relative, cache / mine)
        mine_manifest = {**manifest, "entries": entries, "target": {**manifest["target"], "dataset_name": name}}
        relative_manifest = Path("manifests") / name / "nnUNetPlans" / "2d" / TRAINER / manifest_path.name
        for cache in [fleet_cache, *([alone] if n == 0 else [])]:
            (cache / relative_manifest).parent.mkdir(parents=True, exist_ok=True)
            (cache / relative_manifest).write_text(json.dumps(mine_manifest))
    print(f"fleet: {targets} targets of {len(chosen)} files, {total / 1e6:.2f} MB each", file=sys.stderr)
    return fleet_preprocessed, fleet_cache, alone


Runner = Callable[[list[str], Path], subprocess.CompletedProcess]


def timed_cli(run: Runner, code_root: Path, argv: list[str]) -> float:
    """Seconds `nnunet-warmer ARGV` took, with the warmer of `code_root`."""
    start = time.perf_counter()
    result = run([sys.executable, "-m", "warmer", *argv], code_root)
    seconds = time.perf_counter() - start
    if result.returncode not in (0, 1):
        raise SystemExit(f"{argv}: exit {result.returncode}\n{result.stderr[-2000:]}")
    return seconds


def watch_pass(run: Runner, code_root: Path, cache: Path) -> dict:
    """One `watch` pass over the fleet, then the idle pass that follows it: its seconds and bytes read."""
    result = run([sys.executable, "-c", WATCH_PASS, str(cache), TRAINER], code_root)
    if result.returncode != 0:
        raise SystemExit(f"watch pass: exit {result.returncode}\n{result.stderr[-3000:]}")
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    if set(outcome["second"]) != {"warm"}:
        raise SystemExit(f"the idle pass did not find every target warm: {outcome}")
    return outcome


def measure(run: Runner, versions: dict[str, Path], cache: Path, alone: Path, repeats: int
            ) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict]]:
    """Every figure of both versions, alternating: seconds per command, and each version's idle watch pass."""
    status = ["status", "-d", "100", "-c", "2d", "-tr", TRAINER, "--device", "cpu", "--cache-dir"]
    for code in versions.values():  # each version's first status fills its index, if it has one
        timed_cli(run, code, [*status, str(cache)])
        timed_cli(run, code, [*status, str(alone)])
    rows: dict[str, dict[str, list[float]]] = {version: {} for version in versions}
    for _ in range(repeats):
        for version, code in versions.items():
            row = rows[version]
            row.setdefault("status, all targets present", []).append(timed_cli(run, code, [*status, str(cache)]))
            row.setdefault("status, 1 present", []).append(timed_cli(run, code, [*status, str(alone)]))
            row.setdefault("ls", []).append(timed_cli(run, code, ["ls", "--cache-dir", str(cache)]))
            row.setdefault("gc --dry-run", []).append(
                timed_cli(run, code, ["gc", "--dry-run", "--unused-for", "30", "--cache-dir", str(cache)]))
    passes = {}
    for version, code in versions.items():
        rows[version]["check (one run)"] = [timed_cli(run, code, ["check", "--cache-dir", str(cache)])]
        passes[version] = watch_pass(run, code, cache)
    return rows, passes


def table(where: str, rows: dict[str, dict[str, list[float]]], passes: dict[str, dict]) -> str:
    lines = [f"| {where} | before | after | after / before |", "|---|---|---|---|"]
    b, a = passes["before"], passes["after"]
    lines.append(f"| idle watch pass | {b['seconds']:.2f} s | {a['seconds']:.2f} s | "
                 f"{a['seconds'] / b['seconds']:.3f}x |")
    lines.append(f"| idle watch pass: bytes read | {b['bytes'] / 1e6:.1f} MB | {a['bytes'] / 1e6:.3f} MB | "
                 f"{a['bytes'] / b['bytes']:.5f}x |")
    for name in rows["before"]:
        before, after = statistics.median(rows["before"][name]), statistics.median(rows["after"][name])
        lines.append(f"| {name} | {before:.2f} s | {after:.2f} s | {after / before:.2f}x |")
    for version in ("before", "after"):
        ratio = statistics.median(rows[version]["status, all targets present"]) / statistics.median(
            rows[version]["status, 1 present"])
        lines.append(f"| {version}: status, all present / 1 present | | | {ratio:.2f}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--targets", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", default="d716a24~1", help="git revision of the code before (default: %(default)s)")
    parser.add_argument("--network-only", action="store_true", help="skip the local-disk table")
    args = parser.parse_args()
    preprocessed = Path(os.environ["nnUNet_preprocessed"])
    trainers = os.pathsep.join([str(ROOT / "warmer" / "demo" / "trainers"), str(ROOT / "tests" / "trainers")])
    tables = []
    before = Path(tempfile.mkdtemp(prefix="nnunet-warmer-before-", dir="/var/tmp"))  # a node sees it (not /tmp)
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(before), args.before], cwd=ROOT, check=True)
    versions = {"before": before, "after": ROOT}
    try:
        with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
            work = Path(tmp)
            fleet_preprocessed, cache, alone = fleet(args.cache_dir, preprocessed, work, args.targets)
            env = {**os.environ, "nnUNet_preprocessed": str(fleet_preprocessed), "nnUNet_extTrainer": trainers,
                   "TMPDIR": str(work / "scratch")}
            (work / "scratch").mkdir()
            if not args.network_only:
                rows, passes = measure(lambda argv, code: subprocess.run(argv, cwd=code, env=env,
                                                                         capture_output=True, text=True),
                                       versions, cache, alone, args.repeats)
                tables.append(table("local disk", rows, passes))
        if gluster_up():
            work = HOST_MOUNT / f"bench-fleet-{os.getpid()}"
            node = Node("bench")
            try:
                fleet(args.cache_dir, preprocessed, work, args.targets)
                shared = NODE_MOUNT / work.name
                node_env = {**os.environ, "nnUNet_preprocessed": str(shared / "preprocessed"),
                            "nnUNet_extTrainer": trainers, "TMPDIR": "/tmp", "HOME": "/tmp"}
                # nsenter starts in the node's / : change to the version's checkout inside it
                rows, passes = measure(lambda argv, code: node.run(["sh", "-c", 'cd "$0" && exec "$@"', str(code),
                                                                    *argv], node_env), versions,
                                       shared / "cache", shared / "alone", args.repeats)
                tables.append(table("GlusterFS (FUSE, default options)", rows, passes))
            finally:
                node.stop()
                shutil.rmtree(work, ignore_errors=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {os.cpu_count()} cores; {args.targets} targets "
          f"of about {CLOSURE_BYTES / 1e6:.1f} MB; 'before' is {args.before}; median of {args.repeats}\n")
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
