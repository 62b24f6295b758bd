"""What several commands share: nnU-Net's target flags, the cache and shapes options, and how output is written."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from warmer.cache.layout import CacheDir, default_cache_dir
from warmer.cache.locking import DEFAULT_LEASE_SECONDS, DEFAULT_WAIT_TIMEOUT, LOCK_KINDS, LockPolicy
from warmer.cache.staging import TargetManifests, read_target_manifests
from warmer.cache.trust import OVERRIDE_FLAG, require_trusted
from warmer.errors import UserError
from warmer.values.profiles import PROFILES, JobEnvironment
from warmer.values.targets import TargetKey, TargetRequest


def stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=1, default=str))


def add_dataset_options(parser: argparse.ArgumentParser) -> None:
    """nnU-Net's -d -c -p -tr."""
    parser.add_argument("-d", required=True, metavar="DATASET", help="dataset name or ID, as nnUNetv2_train takes it")
    parser.add_argument("-c", nargs="+", metavar="CONFIG", help="configurations (default: all in the plans)")
    parser.add_argument("-p", default="nnUNetPlans", metavar="PLANS", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-tr", default="nnUNetTrainer", metavar="TRAINER", help="trainer class (default nnUNetTrainer)")


def add_target_options(parser: argparse.ArgumentParser, cache: bool) -> None:
    add_dataset_options(parser)
    parser.add_argument("--device", default="auto", help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--num-gpus", type=int, default=1, metavar="N",
                        help="DDP over N GPUs, as nnUNetv2_train -num_gpus N: one target per rank on cuda:rank, "
                             "warmed together in one process group (with --device cpu: a gloo group on CPU, "
                             "for trainers that allow CPU DDP)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_shapes_option(parser)
    if cache:
        add_cache_option(parser)


def add_shapes_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", choices=PROFILES, default="default",
                        help="default: what plain nnU-Net compiles (automatic dynamic shapes); static: fixed-shape "
                             "graphs only, no symbolic shapes. Warm and train with the same choice.")


def add_cache_option(parser: argparse.ArgumentParser, loads_code: bool = True) -> None:
    parser.add_argument("--cache-dir", default=str(default_cache_dir()),
                        help="shared cache directory (default: $NNUNET_WARMER_CACHE_DIR or ~/.cache/nnunet-warmer)")
    if loads_code:
        parser.add_argument(OVERRIDE_FLAG, action="store_true",
                            help="use a cache dir that others than you, root and your groups could write (its "
                                 "contents run in every training job)")


def add_lock_options(parser: argparse.ArgumentParser) -> None:
    """How a warm waits for other warmers of its target (`warm`, `watch`), and `gc` for publishes to finish."""
    parser.add_argument("--wait-timeout", type=float, default=DEFAULT_WAIT_TIMEOUT, metavar="SECONDS",
                        help=f"how long to wait for another warmer of the same target (default "
                             f"{DEFAULT_WAIT_TIMEOUT:.0f})")
    parser.add_argument("--lock", choices=LOCK_KINDS, default="flock",
                        help="flock (default; local disks, NFSv4, Lustre with -o flock) or lease (a file created "
                             "with O_EXCL and renewed while held; for file systems without flock)")
    parser.add_argument("--lease", type=float, default=DEFAULT_LEASE_SECONDS, metavar="SECONDS",
                        help=f"--lock lease: a holder silent this long is taken over (default "
                             f"{DEFAULT_LEASE_SECONDS:.0f})")


def lock_policy(args: argparse.Namespace) -> LockPolicy:
    return LockPolicy(args.lock, args.wait_timeout, args.lease)


def target_request(args: argparse.Namespace) -> TargetRequest:
    return TargetRequest(args.d, tuple(args.c or ()), args.p, args.tr, args.device, args.num_gpus)


def job_environment(args: argparse.Namespace) -> JobEnvironment:
    """This process's environment with the chosen shapes profile: what every replay and job starts with."""
    return JobEnvironment.with_profile(getattr(args, "shapes", "default"))


def existing_cache(args: argparse.Namespace) -> CacheDir:
    """The cache dir of a command that reads what is there: one that does not exist is a mistyped --cache-dir."""
    cache = CacheDir(Path(args.cache_dir))
    if not cache.root.is_dir():
        raise UserError(f"cache dir {cache.root} does not exist: pass the --cache-dir you warmed")
    return cache


def trusted_cache(args: argparse.Namespace) -> CacheDir:
    """The cache dir of a command that loads code from any of it, refused when others could have planted code in
    it."""
    return job_cache(args, None)[0]


def job_cache(args: argparse.Namespace, keys: list[TargetKey] | None) -> tuple[CacheDir, TargetManifests | None]:
    """The cache dir of a job, and (`keys`: a job on a node-local copy of these targets) their manifests, read
    once: refused when others could have planted code in what the job loads (with no `keys`: the whole cache)."""
    cache = CacheDir(Path(args.cache_dir))
    closures = read_target_manifests(cache, keys) if keys else None
    if not args.allow_untrusted_cache:
        require_trusted(cache, closures)
    return cache, closures
