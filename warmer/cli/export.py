"""`nnunet-warmer export`: the warm targets' closures and manifests in one checksummed bundle file."""

from __future__ import annotations

import argparse

from warmer.cli.options import add_target_options, emit_json, job_environment, stderr, target_request, trusted_cache


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write the warm targets' closures and manifests to one bundle file",
                       description="Bundles the targets that are warm in this environment (every requested target "
                                   "must be): their manifests and closures, with each file's size and SHA-256, "
                                   "zstd-compressed, ending in the SHA-256 of the whole file. `import` checks all "
                                   "of it before writing anything.")
    add_target_options(p, cache=True)
    p.add_argument("--to", required=True, metavar="FILE", help="the bundle file to write (replaced atomically)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from warmer.cache.manifest import Manifest
    from warmer.cache.sizes import format_size
    from warmer.errors import UserError
    from warmer.lifecycle.bundle import write_bundle
    from warmer.pipeline.status import target_status
    from warmer.values.targets import select_targets

    dp, targets = select_targets(target_request(args))
    cache = trusted_cache(args)
    statuses = [target_status(dp, t, cache, job_environment(args)) for t in targets]
    not_warm = [s for s in statuses if s.state != "warm"]
    if not_warm:
        raise UserError(f"{not_warm[0].target.label} is {not_warm[0].state} here"
                        f"{' (' + '; '.join(not_warm[0].differences) + ')' if not_warm[0].differences else ''}: "
                        f"warm it first (nnunet-warmer warm), or leave it out with -c")
    manifests = [Manifest.read(s.manifest) for s in statuses if s.manifest is not None]
    to = Path(args.to)
    try:
        result = write_bundle(cache, manifests, to, stderr)
    except OSError as e:
        raise UserError(f"cannot write {to} ({e.strerror}): pass another --to") from None
    if args.json:
        emit_json(result.to_dict())
    else:
        for target in result.targets:
            print(f"exported  {target.label} on {target.device}")
        print(f"{to}: {result.files} files, {format_size(result.content_bytes)} in "
              f"{format_size(result.bundle_bytes)} ({result.seconds:.1f} s)")
    return 0
