"""`nnunet-warmer check`: find damaged cache entries and what others could have planted code in, without compiling
(exit 1 if any), and the entries no manifest's closure lists."""

from __future__ import annotations

import argparse

from warmer.cli.options import add_cache_option, emit_json, existing_cache


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="find damaged cache entries, and entries others could write, without "
                                     "compiling; exit 1 if any")
    add_cache_option(p, loads_code=False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from warmer.cache.integrity import find_damage
    from warmer.cache.trust import untrusted_entries
    from warmer.lifecycle.inventory import take_inventory

    cache = existing_cache(args)
    inventory = take_inventory(cache)
    damaged = find_damage(cache, [t.manifest for t in inventory.targets], inventory.unreadable_manifests)
    untrusted = untrusted_entries(cache.root)
    unlisted, unlisted_bytes = inventory.unlisted, inventory.unlisted_bytes
    if args.json:
        emit_json({"cache_dir": str(cache.root), "damaged": [d.to_dict() for d in damaged], "untrusted": untrusted,
                   "unlisted": {"files": len(unlisted), "bytes": unlisted_bytes, "entries": unlisted}})
    else:
        for item in damaged:
            print(f"damaged  {item.path}: {item.problem}")
        print(f"{len(damaged)} damaged entries" + (": `nnunet-warmer warm` for the affected targets moves them "
                                                   "to quarantine/ and compiles them again" if damaged else ""))
        for phrase in untrusted:
            print(f"untrusted  {phrase}")
        if untrusted:
            print(f"{len(untrusted)} paths others could have planted code in: jobs whose targets' closures hold "
                  f"them, and `warm`, refuse the cache until their owner or permissions are fixed (chmod -R o-w)")
        print(f"{len(unlisted)} entries ({unlisted_bytes / 1e6:.1f} MB) are in no manifest's closure: no verified "
              f"target loads them")
    return 1 if damaged or untrusted else 0
