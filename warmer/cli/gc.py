"""`nnunet-warmer gc`: bound the cache by size and last use; safe while warms and training jobs run."""

from __future__ import annotations

import argparse

from warmer.cli.options import add_cache_option, add_lock_options, emit_json, existing_cache, lock_policy, stderr
from warmer.lifecycle.gc import DEFAULT_GRACE_DAYS, QUARANTINE_DAYS, GcPlan, GcResult


def _size_argument(text: str) -> int:
    from warmer.cache.sizes import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _days_argument(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if days < 0:
        raise argparse.ArgumentTypeError(f"a number of days is not negative: {text!r}")
    return days


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gc", help="drop the targets unused longest until the cache fits; delete what no manifest "
                                  "lists", description=(
        "Drops the manifests of targets unused for more than --unused-for days, then of the targets unused longest "
        "(never-used first) until the cache fits --max-size, and deletes the files of their closures that no other "
        "manifest lists. Also deletes entries in no closure older than --grace-days, quarantine older than "
        f"{QUARANTINE_DAYS:.0f} days and temp files of dead writers. Last use comes from the ledger (`run`). Exit 1 "
        "when the cache still exceeds --max-size."))
    add_cache_option(p, loads_code=False)
    p.add_argument("--max-size", type=_size_argument, metavar="SIZE",
                   help="keep the cache at most this big: 500G, 1.5Ti, 800M (K/M/G/T: powers of 1000, Ki/Mi/Gi/Ti: "
                        "of 1024), as `du -sb` measures it")
    p.add_argument("--unused-for", type=_days_argument, metavar="DAYS",
                   help="drop targets no job used for more than DAYS days (never-used ones: since their warm)")
    p.add_argument("--grace-days", type=_days_argument, default=DEFAULT_GRACE_DAYS, metavar="DAYS",
                   help=f"keep entries in no closure younger than this: a warm in progress may own them (default "
                        f"{DEFAULT_GRACE_DAYS:g})")
    p.add_argument("--dry-run", action="store_true", help="say what would go; change nothing")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_lock_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from warmer.lifecycle.gc import GcPolicy, collect, plan_gc

    cache = existing_cache(args)
    if not args.dry_run:
        cache.require_writable()
    plan = plan_gc(cache, GcPolicy(args.max_size, args.unused_for, args.grace_days), stderr)
    if args.dry_run:
        fits = args.max_size is None or plan.projected_bytes <= args.max_size
        if args.json:
            emit_json({**plan.to_dict(), "dry_run": True, "fits": fits})
        else:
            _print(plan, None)
        return 0 if fits else 1
    result = collect(plan, lock_policy(args), stderr)
    if args.json:
        emit_json(result.to_dict())
    else:
        _print(plan, result)
    return 0 if result.fits else 1


def _print(plan: GcPlan, result: GcResult | None) -> None:
    from warmer.cache.sizes import format_size
    from warmer.lifecycle.inventory import age

    drops = result.dropped if result is not None else plan.drops
    verb = "dropped" if result is not None else "would drop"
    for drop in drops:
        t = drop.target
        why = f"unused for more than {plan.policy.unused_for_days:g} d" if drop.reason == "unused" else "over size"
        print(f"{verb:10} {t.manifest.target.label}  {t.gpu}  torch {t.manifest.fingerprint.get('torch', '')}  "
              f"last used {age(t.last_used)}  ({why})")
    for t in plan.kept:
        print(f"{'kept':10} {t.manifest.target.label}  {t.gpu}  torch {t.manifest.fingerprint.get('torch', '')}  "
              f"last used {age(t.last_used)}  closure {format_size(t.closure_bytes)}")
    litter = plan.litter
    print(f"litter: {len(litter.stray_entries)} entries in no closure older than {plan.policy.grace_days:g} d "
          f"({format_size(sum(litter.stray_entries.values()))}), {len(litter.old_quarantine)} quarantine folder(s) "
          f"older than {QUARANTINE_DAYS:.0f} d, {len(litter.dead_temps)} temp file(s) of dead writers, "
          f"{len(litter.empty_folders)} empty folder(s); kept: {format_size(plan.young_unlisted_bytes)} in no "
          f"closure but younger than {plan.policy.grace_days:g} d")
    limit = f" (limit {format_size(plan.policy.max_size)})" if plan.policy.max_size is not None else ""
    if result is None:
        print(f"would free {format_size(plan.cache_bytes - plan.projected_bytes)}: cache "
              f"{format_size(plan.cache_bytes)} -> {format_size(plan.projected_bytes)}{limit}; nothing was changed")
    else:
        print(f"freed {format_size(result.freed_bytes)} in {result.deleted_files} file(s) and {len(result.dropped)} "
              f"target(s): cache {format_size(plan.cache_bytes)} -> {format_size(result.cache_bytes_after)}{limit}")
    if plan.policy.max_size is not None and plan.projected_bytes > plan.policy.max_size:
        print("the cache cannot fit the limit: what is left is in use, in no closure but younger than the grace "
              "period, the ledger, the manifests and the locks; raise --max-size")
