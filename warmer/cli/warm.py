"""`nnunet-warmer warm`: compile every target into the cache and verify it from a fresh process."""

from __future__ import annotations

import argparse

from warmer.cache.trust import shared_root_for_writing
from warmer.cli.options import (
    add_lock_options,
    add_target_options,
    emit_json,
    job_environment,
    lock_policy,
    stderr,
    target_request,
    trusted_cache,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("warm", help="compile every target into the cache and verify it from a fresh process")
    add_target_options(p, cache=True)
    add_lock_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from warmer.errors import UserError
    from warmer.pipeline.warm import warm_targets
    from warmer.values.targets import select_targets

    dp, targets = select_targets(target_request(args))
    cache = trusted_cache(args)
    lock = lock_policy(args)
    outcomes, failures, cannot_compile = [], [], None
    with shared_root_for_writing(cache):
        for group in warm_targets(dp, targets, cache, job_environment(args), lock, stderr):
            if group.failure is not None:
                failures.append(group.failure)
            cannot_compile = cannot_compile or group.cannot_compile
            outcomes.extend(group.outcomes)
            if not args.json:
                for outcome in group.outcomes:
                    print(f"{outcome.target.label}: {outcome.message}")
    if args.json:
        emit_json({"cache_dir": str(cache.root), "targets": [o.to_dict() for o in outcomes], "failures": failures,
                   "cannot_compile": cannot_compile.to_dict() if cannot_compile else None})
    if cannot_compile is not None:
        raise UserError(cannot_compile.line())
    return 1 if failures else 0
