"""`nnunet-warmer demo`: the built-in default job, a synthetic dataset warmed and trained cold vs warm."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthetic dataset -> plan -> warm -> short real training, cold vs warm")
    p.add_argument("--workdir", default="nnunet-warmer-demo", help="where the demo writes")
    p.add_argument("-c", nargs="+", default=["2d", "3d_fullres"], metavar="CONFIG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from warmer.demo.cold_vs_warm import run_demo
    from warmer.values.compat import check_versions

    check_versions()
    return run_demo(Path(args.workdir), args.c, args.json)
