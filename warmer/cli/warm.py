"""`nnunet-warmer warm`: compile every target into the cache and verify it from a fresh process."""

from __future__ import annotations

import argparse

from warmer.cache.locking import DEFAULT_LEASE_SECONDS, DEFAULT_WAIT_TIMEOUT, LOCK_KINDS, LockPolicy
from warmer.cache.trust import shared_root_for_writing
from warmer.cli.options import add_target_options, emit_json, job_environment, stderr, target_request, trusted_cache


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("warm", help="compile every target into the cache and verify it from a fresh process")
    add_target_options(p, cache=True)
    p.add_argument("--wait-timeout", type=float, default=DEFAULT_WAIT_TIMEOUT, metavar="SECONDS",
                   help=f"how long to wait for another warmer of the same target (default {DEFAULT_WAIT_TIMEOUT:.0f})")
    p.add_argument("--lock", choices=LOCK_KINDS, default="flock",
                   help="flock (default; local disks, NFSv4, Lustre with -o flock) or lease (a file created with "
                        "O_EXCL and renewed while held; for file systems without flock)")
    p.add_argument("--lease", type=float, default=DEFAULT_LEASE_SECONDS, metavar="SECONDS",
                   help=f"--lock lease: a holder silent this long is taken over (default {DEFAULT_LEASE_SECONDS:.0f})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from warmer.pipeline.targets import select_targets
    from warmer.pipeline.warm import warm_targets

    dp, targets = select_targets(target_request(args))
    cache = trusted_cache(args)
    lock = LockPolicy(args.lock, args.wait_timeout, args.lease)
    outcomes, failures = [], []
    with shared_root_for_writing(cache):
        for group in warm_targets(dp, targets, cache, job_environment(args), lock, stderr):
            if group.failure is not None:
                failures.append(group.failure)
            outcomes.extend(group.outcomes)
            if not args.json:
                for outcome in group.outcomes:
                    print(f"{outcome.target.label}: {outcome.message}")
    if args.json:
        emit_json({"cache_dir": str(cache.root), "targets": [o.to_dict() for o in outcomes], "failures": failures})
    return 1 if failures else 0
