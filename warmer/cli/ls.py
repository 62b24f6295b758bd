"""`nnunet-warmer ls`: one row per verified target in the cache, with sizes, sharing and last use."""

from __future__ import annotations

import argparse

from warmer.cli.options import add_cache_option, emit_json, existing_cache, job_environment


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ls", help="what the cache holds: one row per verified target, sizes, last use")
    add_cache_option(p, loads_code=False)
    p.add_argument("--sort", choices=("size", "last-used"), default="size",
                   help="size (largest closure first, default) or last-used (least recently used first)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from warmer.cache.sizes import format_size
    from warmer.lifecycle.inventory import age, take_inventory
    from warmer.values.fingerprint import HostEnvironment

    cache = existing_cache(args)
    inventory = take_inventory(cache, HostEnvironment.here(job_environment(args)))
    if args.sort == "size":
        rows = sorted(inventory.targets, key=lambda t: -t.closure_bytes)
    else:
        rows = sorted(inventory.targets, key=lambda t: t.last_used or 0.0)
    if args.json:
        emit_json({**inventory.to_dict(), "targets": [t.to_dict() for t in rows]})
        return 0
    width = max([len("target"), *(len(t.manifest.target.label) for t in rows)])
    print(f"{'target':{width}} {'gpu':22} {'torch':14} {'here':17} {'closure':>9} {'shared':>9}  {'last used':12} "
          f"verified")
    for t in rows:
        print(f"{t.manifest.target.label:{width}} {t.gpu[:22]:22} {t.manifest.fingerprint.get('torch', '')[:14]:14} "
              f"{t.here:17} {format_size(t.closure_bytes):>9} {format_size(t.shared_bytes):>9}  {age(t.last_used):12} "
              f"{t.manifest.verified_at}")
    print(f"{len(rows)} target(s); cache {format_size(inventory.cache_bytes)}, in no closure "
          f"{format_size(inventory.unlisted_bytes)}, quarantine {format_size(inventory.quarantine_bytes)}"
          + (f"; {len(inventory.unreadable_manifests)} unreadable manifest(s)" if inventory.unreadable_manifests
             else ""))
    return 0
