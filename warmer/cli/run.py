"""`nnunet-warmer run -- COMMAND`: run a command on the cache and report what torch compiled in its processes."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from warmer.cli.options import add_cache_option, add_shapes_option, job_cache, job_environment, stderr
from warmer.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a command on the cache and report what torch compiled")
    add_cache_option(p)
    add_shapes_option(p)
    p.add_argument("--json", metavar="FILE", help="also write the summary as JSON to FILE")
    p.add_argument("--eager-if-cannot-compile", action="store_true",
                   help="when a warm found that this node type cannot compile the command's target (`status` says "
                        "cannot-compile), run it eager (nnUNet_compile=f) instead of refusing it")
    p.add_argument("--scratch", metavar="DIR",
                   help="node-local folder for the copy of the command's target that nnUNetv2_train and "
                        "nnUNetv2_predict run on (default: $SLURM_TMPDIR, then $TMPDIR, then /tmp)")
    p.add_argument("--in-place", action="store_true",
                   help="run on the shared cache itself instead of a node-local copy (torch must be able to write "
                        "it; for a cache on this host's own disk)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from warmer.cache.staging import default_scratch
    from warmer.run.command import parse_nnunet_command
    from warmer.run.runner import run_and_record

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UserError("no command given: nnunet-warmer run -- nnUNetv2_train DATASET CONFIG FOLD")
    scratch = None if args.in_place else Path(args.scratch) if args.scratch else default_scratch(dict(os.environ))
    target = parse_nnunet_command(command)
    cache, closures = job_cache(args, [target.key] if target is not None and scratch is not None else None)
    summary = run_and_record(command, cache, job_environment(args), report=stderr,
                             eager_if_cannot_compile=args.eager_if_cannot_compile, scratch=scratch, closures=closures)
    if args.json:
        Path(args.json).write_text(json.dumps(summary.to_dict(), indent=1))
    return summary.exit_code
