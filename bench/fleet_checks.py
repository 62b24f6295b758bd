"""What checking a fleet's cache costs: 300 targets, before and after the checks that cost what changed (issue 27).

Side by side in one run, alternating, on local disk: one idle `watch` pass (its time and the bytes its process read,
rchar of /proc/self/io: every byte read() returned, file content and /proc alike), `status` of one target with 300
targets in the cache against the same target alone, `ls` and `gc --dry-run` at 300 targets, and `check`.
"Before" is the code of a git revision (default: the parent of the commit that added the index), checked out into a
temp worktree; "after" is this checkout. Each process imports the warmer of its working directory.

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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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


def timed_cli(code_root: Path, argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "warmer", *argv], cwd=code_root, env=env, capture_output=True,
                            text=True)
    seconds = time.perf_counter() - start
    if result.returncode not in (0, 1):
        raise SystemExit(f"{argv}: exit {result.returncode}\n{result.stderr[-2000:]}")
    return seconds


def watch_pass(code_root: Path, cache: Path, env: dict[str, str]) -> dict:
    result = subprocess.run([sys.executable, "-c", WATCH_PASS, str(cache), TRAINER], cwd=code_root, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"watch pass: exit {result.returncode}\n{result.stderr[-3000:]}")
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    if outcome["second"] != {"warm": outcome["second"].get("warm", 0)}:
        raise SystemExit(f"the idle pass did not find every target warm: {outcome}")
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--targets", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", default="d716a24~1", help="git revision of the code before (default: %(default)s)")
    args = parser.parse_args()
    preprocessed = Path(os.environ["nnUNet_preprocessed"])
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
        work = Path(tmp)
        before = work / "before"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(before), args.before], cwd=ROOT, check=True)
        try:
            fleet_preprocessed, cache, alone = fleet(args.cache_dir, preprocessed, work, args.targets)
            env = {**os.environ, "nnUNet_preprocessed": str(fleet_preprocessed), "TMPDIR": str(work / "scratch"),
                   "nnUNet_extTrainer": os.pathsep.join([str(ROOT / "warmer" / "demo" / "trainers"),
                                                         str(ROOT / "tests" / "trainers")])}
            (work / "scratch").mkdir()
            versions = {"before": before, "after": ROOT}
            status = ["status", "-d", "100", "-c", "2d", "-tr", TRAINER, "--device", "cpu", "--cache-dir"]
            rows: dict[str, dict[str, list[float]]] = {}
            passes: dict[str, dict] = {}
            for code in versions.values():  # each version's first status fills its index, if it has one
                timed_cli(code, [*status, str(cache)], env)
                timed_cli(code, [*status, str(alone)], env)
            for _ in range(args.repeats):
                for version, code in versions.items():
                    row = rows.setdefault(version, {})
                    row.setdefault("status, 300 present", []).append(timed_cli(code, [*status, str(cache)], env))
                    row.setdefault("status, 1 present", []).append(timed_cli(code, [*status, str(alone)], env))
                    row.setdefault("ls", []).append(timed_cli(code, ["ls", "--cache-dir", str(cache)], env))
                    row.setdefault("gc --dry-run", []).append(
                        timed_cli(code, ["gc", "--dry-run", "--unused-for", "30", "--cache-dir", str(cache)], env))
            for version, code in versions.items():
                rows[version]["check"] = [timed_cli(code, ["check", "--cache-dir", str(cache)], env)]
                passes[version] = watch_pass(code, cache, env)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} cores, local disk, {args.targets} "
          f"targets of about {CLOSURE_BYTES / 1e6:.1f} MB; median of {args.repeats} (check: one run)\n")
    print("| | before | after | after / before |")
    print("|---|---|---|---|")
    for name in ("idle watch pass: seconds", "idle watch pass: bytes read"):
        key = "seconds" if "seconds" in name else "bytes"
        b, a = passes["before"][key], passes["after"][key]
        shown = (f"{b:.2f} s", f"{a:.2f} s") if key == "seconds" else (f"{b / 1e6:.1f} MB", f"{a / 1e6:.3f} MB")
        print(f"| {name} | {shown[0]} | {shown[1]} | {a / b:.3f}x |")
    for name in rows["before"]:
        b, a = statistics.median(rows["before"][name]), statistics.median(rows["after"][name])
        print(f"| {name} | {b:.2f} s | {a:.2f} s | {a / b:.2f}x |")
    for version in versions:
        ratio = statistics.median(rows[version]["status, 300 present"]) / statistics.median(
            rows[version]["status, 1 present"])
        print(f"\n{version}: status with {args.targets} targets present / with 1: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
