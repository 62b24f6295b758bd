"""`nnunet-warmer stats`: hits, misses, compile seconds and seconds saved, summed from the ledger."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from warmer.cli.options import add_cache_option, emit_json, existing_cache, job_environment
from warmer.ledger import records, stats


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="hits, misses, compile seconds and seconds saved, from the ledger")
    add_cache_option(p, loads_code=False)
    p.add_argument("--since", help="only records from this date (ISO) or epoch second on (default: last --zero)")
    p.add_argument("--zero", action="store_true", help="start a new statistics period")
    p.add_argument("--metrics-file", metavar="PATH",
                   help="also write Prometheus text-format metrics (node_exporter textfile collector)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cache = existing_cache(args)
    if args.zero:
        cache.require_writable()
        started = records.start_new_period(cache)
        print(f"new statistics period from {datetime.fromtimestamp(started).isoformat(timespec='seconds')}")
        return 0
    since = stats.parse_since(args.since) if args.since else records.period_start(cache)
    summary = stats.summarize(cache, since)
    if args.metrics_file:
        from warmer.ledger.metrics import write_metrics

        write_metrics(Path(args.metrics_file), cache, summary, job_environment(args))
    if args.json:
        emit_json(summary)
    else:
        print(stats.describe(summary))
    return 0
