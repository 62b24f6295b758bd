"""`nnunet-warmer import`: a bundle's targets into a cache dir, after checking every byte of it."""

from __future__ import annotations

import argparse

from warmer.cli.options import (
    add_cache_option,
    add_lock_options,
    add_shapes_option,
    emit_json,
    job_environment,
    lock_policy,
    stderr,
    trusted_cache,
)

OTHER_ENVIRONMENT_FLAG = "--allow-other-environment"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="check a bundle from `export` and write its targets into the cache",
                       description="Refuses, writing nothing, a bundle whose bytes or members do not match their "
                                   "checksums, members outside the cache's entries (absolute paths, '..', links, "
                                   "devices), and targets verified under another environment than this host's "
                                   f"(unless {OTHER_ENVIRONMENT_FLAG}). Entries are written atomically; identical "
                                   "ones are kept; manifests last.")
    p.add_argument("bundle", metavar="FILE", help="a bundle written by `nnunet-warmer export`")
    add_cache_option(p)
    add_shapes_option(p)
    p.add_argument(OTHER_ENVIRONMENT_FLAG, action="store_true",
                   help="import targets verified under other software or another device too (`status` will say "
                        "stale and name what differs)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_lock_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from warmer.cache.sizes import format_size
    from warmer.cache.trust import shared_root_for_writing
    from warmer.errors import UserError
    from warmer.lifecycle.bundle import BundleError, check_bundle, environment_differences, import_bundle
    from warmer.values.fingerprint import HostEnvironment

    path = Path(args.bundle)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise UserError(f"bundle {path} does not exist or cannot be read: pass the file `nnunet-warmer export --to` "
                        f"wrote")
    cache = trusted_cache(args)
    with shared_root_for_writing(cache):
        try:
            index = check_bundle(path, cache, stderr)
            differing = environment_differences(index, HostEnvironment.here(job_environment(args)))
            if differing and not args.allow_other_environment:
                label, parts = next(iter(differing.items()))
                raise UserError(f"bundle {path}: {label} was verified under another environment "
                                f"({'; '.join(parts)}); nothing was imported: export it from a node like this one, "
                                f"or pass {OTHER_ENVIRONMENT_FLAG} (status will say stale)")
        except BundleError as e:
            raise UserError(f"bundle {path} refused: {e}; nothing was imported: export it again") from None
        try:
            result = import_bundle(path, cache, index, lock_policy(args), stderr)
        except BundleError as e:
            raise UserError(f"bundle {path} changed while it was imported ({e}); no manifest was written: "
                            f"import it again") from None
    if args.json:
        emit_json({"bundle": str(path), "cache_dir": str(cache.root), **result.to_dict(),
                   "other_environment": differing})
    else:
        for target in index.targets:
            other = f"  (other environment: {'; '.join(differing[target.label])})" if target.label in differing else ""
            print(f"imported  {target.label} on {target.device}{other}")
        print(f"{result.written} files written ({format_size(result.written_bytes)}), {result.kept} identical kept, "
              f"{result.replaced} replaced ({result.seconds:.1f} s)")
    return 0
