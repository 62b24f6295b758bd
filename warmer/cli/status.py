"""`nnunet-warmer status`: warm / damaged / stale / cannot-compile / cold per target; exit 0 only if all are warm
(a job's gate), 3 when a warm found this node type cannot compile one of them, 1 otherwise."""

from __future__ import annotations

import argparse
import os

from warmer.cli.options import add_target_options, emit_json, job_cache, job_environment, target_request
from warmer.pipeline.status import CANNOT_COMPILE_EXIT


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="warm / stale / cold per target; exit 0 only if all are warm, 3 when this "
                                      "node type cannot compile one, 1 otherwise")
    add_target_options(p, cache=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from warmer.cache.staging import default_scratch
    from warmer.pipeline.status import targets_status
    from warmer.values.targets import select_targets

    dp, targets = select_targets(target_request(args))
    cache, _ = job_cache(args, [t.key for t in targets])
    environment = job_environment(args)
    statuses = targets_status(dp, targets, cache, environment, default_scratch(dict(os.environ)))
    if args.json:
        emit_json({"cache_dir": str(cache.root), "targets": [s.to_dict() for s in statuses]})
    else:
        for status in statuses:
            print(status.describe())
    if any(s.state == "cannot-compile" for s in statuses):
        return CANNOT_COMPILE_EXIT
    return 0 if all(s.state == "warm" for s in statuses) else 1
