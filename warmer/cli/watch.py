"""`nnunet-warmer watch`: a long-running service for a GPU node that warms whatever is not warm, pass after pass."""

from __future__ import annotations

import argparse
from pathlib import Path

from warmer.cli.options import (
    add_cache_option,
    add_lock_options,
    add_shapes_option,
    job_environment,
    lock_policy,
    stderr,
    trusted_cache,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("watch", help="service: keep this node's cache warm as plans and software change",
                       description="Every --interval seconds: find the datasets' plans under nnUNet_preprocessed, "
                                   "take each target's status for this node, and warm the cold, stale and damaged "
                                   "ones, one at a time. Stops on SIGTERM or SIGINT.")
    p.add_argument("-d", nargs="+", default=[], metavar="DATASET",
                   help="datasets to keep warm (default: every dataset folder under nnUNet_preprocessed)")
    p.add_argument("-c", nargs="+", default=[], metavar="CONFIG",
                   help="only these configurations, where a dataset has them (default: all in each plans)")
    p.add_argument("-p", default="nnUNetPlans", metavar="PLANS", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-tr", default="nnUNetTrainer", metavar="TRAINER", help="trainer class (default nnUNetTrainer)")
    p.add_argument("--device", default="auto", help="cuda or cpu (default: cuda if available)")
    add_cache_option(p)
    add_shapes_option(p)
    add_lock_options(p)
    p.add_argument("--interval", type=float, default=60, metavar="SECONDS",
                   help="seconds between passes (default 60; polling, since inotify misses other hosts' writes)")
    p.add_argument("--retry-base", type=float, default=60, metavar="SECONDS",
                   help="a failed warm is retried after this, then twice as long each time (default 60)")
    p.add_argument("--retry-max", type=float, default=3600, metavar="SECONDS",
                   help="the longest wait between retries (default 3600)")
    p.add_argument("--metrics-file", metavar="PATH",
                   help="write Prometheus metrics to PATH (node_exporter's textfile collector)")
    p.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics over HTTP on PORT")
    p.add_argument("--metrics-address", default="127.0.0.1", metavar="ADDRESS",
                   help="address of --metrics-port (default 127.0.0.1; 0.0.0.0 for a remote Prometheus)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from warmer.errors import UserError
    from warmer.service.metrics import ServiceMetrics
    from warmer.service.watch import WatchRequest, watch
    from warmer.values.plans import preprocessed_root

    for flag, value in (("--interval", args.interval), ("--retry-base", args.retry_base),
                        ("--retry-max", args.retry_max)):
        if value <= 0:
            raise UserError(f"{flag} {value:g}: pass a number of seconds above 0")
    preprocessed_root()
    cache = trusted_cache(args)
    metrics = None
    if args.metrics_file or args.metrics_port is not None:
        metrics = ServiceMetrics(Path(args.metrics_file) if args.metrics_file else None, args.metrics_port,
                                 args.metrics_address)
    request = WatchRequest(tuple(args.d), tuple(args.c), args.p, args.tr, args.device, args.interval,
                           args.retry_base, args.retry_max, lock_policy(args))
    return watch(request, cache, job_environment(args), stderr, metrics)
