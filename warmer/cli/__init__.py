"""`nnunet-warmer`: the entry point that wires the stages. Flags follow nnU-Net's (-d -c -p -tr)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import json
import os
import shlex
import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

from warmer.cache.layout import CacheDir, default_cache_dir
from warmer.cache.locking import DEFAULT_LEASE_SECONDS, DEFAULT_WAIT_TIMEOUT, LOCK_KINDS, LockPolicy
from warmer.cache.trust import OVERRIDE_FLAG, make_shared_root, require_trusted
from warmer.demo import CPU_TRAINERS_DIR
from warmer.errors import UserError, WarmError
from warmer.pipeline.compat import check_versions
from warmer.pipeline.profiles import PROFILES, profile_environment


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)




def _targets(args: argparse.Namespace, dry_run: bool = False) -> tuple[Any, list[Any]]:
    from warmer.pipeline.plans import find_trainer_class, load_plans, resolve_configurations
    from warmer.pipeline.targets import build_targets, ddp_devices, resolve_device

    check_versions()
    dp = load_plans(args.d, args.p)
    configurations = resolve_configurations(dp, args.c)
    find_trainer_class(args.tr)
    devices = ddp_devices(args.num_gpus, args.device, dry_run) or [resolve_device(args.device)]
    return dp, build_targets(dp, configurations, args.tr, devices)


def _emit_json(data: Any) -> None:
    print(json.dumps(data, indent=1, default=str))


def cmd_list(args: argparse.Namespace) -> int:
    from warmer.pipeline.calls import plan_calls, variant_paths

    dp, targets = _targets(args, dry_run=True)
    listing = [{"target": t.to_dict(), "label": t.label, "variant_paths": variant_paths(dp, t),
                "calls": [c.to_dict() for c in plan_calls(dp, t)]} for t in targets]
    if args.json:
        _emit_json({"plans_file": str(dp.plans_file), "targets": listing})
        return 0
    for target in targets:
        cm = dp.configuration(target.configuration)
        print(f"{target.label}  batch {target.batch_per_rank} per rank on {target.device}, patch "
              f"{'x'.join(str(p) for p in cm.patch_size)}, {len(cm.pool_op_kernel_sizes)} stages")
        print(f"  paths: {'; '.join(variant_paths(dp, target))}")
        for call in plan_calls(dp, target):
            inputs = ", ".join(str(t) for t in call.inputs)
            outputs = ", ".join(str(t) for t in call.outputs)
            times = f" x{call.calls_per_step}" if call.calls_per_step > 1 else ""
            print(f"  {call.phase:17} {call.function:9} {call.mode:30} ({inputs}) -> {outputs}{times}"
                  f"  [{call.note}]")
    return 0


def cmd_warm(args: argparse.Namespace) -> int:
    dp, targets = _targets(args)
    cache = _trusted_cache(args)
    cache.require_writable()
    existed = cache.root.exists()
    make_shared_root(cache)
    try:
        return _warm_groups(args, dp, targets, cache)
    finally:
        if not existed:
            cache.remove_if_empty()


def _warm_groups(args: argparse.Namespace, dp: Any, targets: list[Any], cache: CacheDir) -> int:
    from warmer.pipeline.warm import warm_group

    lock = LockPolicy(args.lock, args.wait_timeout, args.lease)
    groups = [list(ranks) for _, ranks in itertools.groupby(targets, key=lambda t: t.configuration)]
    outcomes, failures = [], []
    for index, group in enumerate(groups, 1):
        first = group[0]
        devices = ", ".join(dict.fromkeys(t.device for t in group))
        where = devices if len(group) == 1 else f"{len(group)} DDP ranks on {devices}"
        prefix = f"[{index}/{len(groups)}] {first.configuration} ({first.trainer}, batch " \
                 f"{'+'.join(str(t.batch_per_rank) for t in group)}, {where})"
        _stderr(f"{prefix}: warming")
        try:
            done = warm_group(dp, group, cache, lambda msg, p=prefix: _stderr(f"{p}: {msg}"), lock)
        except WarmError as e:
            failures.append(str(e))
            _stderr(f"{prefix}: FAILED: {e}")
            continue
        outcomes.extend(done)
        if not args.json:
            for outcome in done:
                print(f"{outcome.target.label}: {outcome.message}")
    if args.json:
        _emit_json({"cache_dir": str(cache.root), "targets": [o.to_dict() for o in outcomes],
                    "failures": failures})
    return 1 if failures else 0


def cmd_status(args: argparse.Namespace) -> int:
    from warmer.cache.status import describe, target_status

    dp, targets = _targets(args)
    cache = _trusted_cache(args)
    records = [target_status(dp, t, cache) for t in targets]
    if args.json:
        _emit_json({"cache_dir": str(cache.root), "targets": records})
    else:
        for record in records:
            print(describe(record))
    return 0 if all(r["state"] == "warm" for r in records) else 1


def cmd_env(args: argparse.Namespace) -> int:
    variables = {**_trusted_cache(args).torch_environment(), **profile_environment(args.shapes)}
    if args.cpu_trainers:
        folders = [str(CPU_TRAINERS_DIR)] + [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
        variables["nnUNet_extTrainer"] = os.pathsep.join(dict.fromkeys(folders))
    if args.json:
        _emit_json(variables)
    else:
        print("".join(f"export {k}={shlex.quote(v)}\n" for k, v in variables.items()), end="")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from warmer.run.runner import run_and_record

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UserError("no command given: nnunet-warmer run -- nnUNetv2_train DATASET CONFIG FOLD")
    code, summary = run_and_record(command, _trusted_cache(args), report=_stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return code


def _parse_since(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise UserError(f"--since '{value}' is neither a date (2026-11-29T08:00) nor seconds since the epoch: "
                        f"fix --since") from None


def cmd_check(args: argparse.Namespace) -> int:
    from warmer.cache.integrity import damaged_entries

    cache = CacheDir(Path(args.cache_dir))
    if not cache.root.is_dir():
        raise UserError(f"cache dir {cache.root} does not exist: pass the --cache-dir you warmed")
    damaged = damaged_entries(cache)
    if args.json:
        _emit_json({"cache_dir": str(cache.root), "damaged": damaged})
    else:
        for item in damaged:
            print(f"damaged  {item['path']}: {item['problem']}")
        print(f"{len(damaged)} damaged entries" + (": `nnunet-warmer warm` for the affected targets moves them "
                                                   "to quarantine/ and compiles them again" if damaged else ""))
    return 1 if damaged else 0


def cmd_stats(args: argparse.Namespace) -> int:
    from warmer.ledger import records as ledger
    from warmer.ledger import stats

    cache = CacheDir(Path(args.cache_dir))
    if args.zero:
        cache.require_writable()
        started = ledger.start_new_period(cache)
        print(f"new statistics period from {datetime.fromtimestamp(started).isoformat(timespec='seconds')}")
        return 0
    since = _parse_since(args.since) if args.since else ledger.period_start(cache)
    summary = stats.summarize(cache, since)
    if args.metrics_file:
        from warmer.ledger.metrics import write_metrics

        write_metrics(Path(args.metrics_file), cache, summary)
    if args.json:
        _emit_json(summary)
    else:
        print(stats.describe(summary))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from warmer.demo.cold_vs_warm import run_demo

    check_versions()
    return run_demo(Path(args.workdir), args.c, args.json)


def _add_target_options(parser: argparse.ArgumentParser, cache: bool) -> None:
    parser.add_argument("-d", required=True, metavar="DATASET", help="dataset name or ID, as nnUNetv2_train takes it")
    parser.add_argument("-c", nargs="+", metavar="CONFIG", help="configurations (default: all in the plans)")
    parser.add_argument("-p", default="nnUNetPlans", metavar="PLANS", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-tr", default="nnUNetTrainer", metavar="TRAINER", help="trainer class (default nnUNetTrainer)")
    parser.add_argument("--device", default="auto", help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--num-gpus", type=int, default=1, metavar="N",
                        help="DDP over N GPUs, as nnUNetv2_train --num-gpus: one target per rank on cuda:rank, "
                             "warmed together in one process group (with --device cpu: a gloo group on CPU, "
                             "for trainers that allow CPU DDP)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_shapes_option(parser)
    if cache:
        _add_cache_option(parser)


def _add_shapes_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", choices=PROFILES, default="default",
                        help="default: what plain nnU-Net compiles (automatic dynamic shapes); static: fixed-shape "
                             "graphs only, no symbolic shapes. Warm and train with the same choice.")


def _add_cache_option(parser: argparse.ArgumentParser, loads_code: bool = True) -> None:
    parser.add_argument("--cache-dir", default=str(default_cache_dir()),
                        help="shared cache directory (default: $NNUNET_WARMER_CACHE_DIR or ~/.cache/nnunet-warmer)")
    if loads_code:
        parser.add_argument(OVERRIDE_FLAG, action="store_true",
                            help="use a cache dir that others than you, root and your groups could write (its "
                                 "contents run in every training job)")


def _trusted_cache(args: argparse.Namespace) -> CacheDir:
    """The cache dir of a command that loads code from it, refused when others could have planted code."""
    cache = CacheDir(Path(args.cache_dir))
    if not args.allow_untrusted_cache:
        require_trusted(cache)
    return cache


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet-warmer",
        description="Precompile the graphs nnU-Net v2 hands to torch.compile into a shared cache, prove from a "
                    "fresh process that they hit, and start training warm.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("list", help="dry run: every compiled call per target, with exact shapes")
    _add_target_options(p, cache=False)
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("warm", help="compile every target into the cache and verify it from a fresh process")
    _add_target_options(p, cache=True)
    p.add_argument("--wait-timeout", type=float, default=DEFAULT_WAIT_TIMEOUT, metavar="SECONDS",
                   help=f"how long to wait for another warmer of the same target (default {DEFAULT_WAIT_TIMEOUT:.0f})")
    p.add_argument("--lock", choices=LOCK_KINDS, default="flock",
                   help="flock (default; local disks, NFSv4, Lustre with -o flock) or lease (a file created with "
                        "O_EXCL and renewed while held; for file systems without flock)")
    p.add_argument("--lease", type=float, default=DEFAULT_LEASE_SECONDS, metavar="SECONDS",
                   help=f"--lock lease: a holder silent this long is taken over (default {DEFAULT_LEASE_SECONDS:.0f})")
    p.set_defaults(func=cmd_warm)
    p = sub.add_parser("status", help="warm / stale / cold per target; exit 0 only if all are warm")
    _add_target_options(p, cache=True)
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("env", help="shell exports that point a training job at the cache")
    _add_cache_option(p)
    _add_shapes_option(p)
    p.add_argument("--cpu-trainers", action="store_true",
                   help="also export nnUNet_extTrainer with the shipped CPU-compiling trainers")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_env)
    p = sub.add_parser("run", help="run a command on the cache and report what torch compiled")
    _add_cache_option(p)
    _add_shapes_option(p)
    p.add_argument("--json", metavar="FILE", help="also write the summary as JSON to FILE")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("check", help="find damaged cache entries without compiling; exit 1 if any")
    _add_cache_option(p, loads_code=False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("stats", help="hits, misses, compile seconds and seconds saved, from the ledger")
    _add_cache_option(p, loads_code=False)
    p.add_argument("--since", help="only records from this date (ISO) or epoch second on (default: last --zero)")
    p.add_argument("--zero", action="store_true", help="start a new statistics period")
    p.add_argument("--metrics-file", metavar="PATH",
                   help="also write Prometheus text-format metrics (node_exporter textfile collector)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)
    p = sub.add_parser("demo", help="synthetic dataset -> plan -> warm -> short real training, cold vs warm")
    p.add_argument("--workdir", default="nnunet-warmer-demo", help="where the demo writes")
    p.add_argument("-c", nargs="+", default=["2d", "3d_fullres"], metavar="CONFIG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def entry() -> None:
    """The installed `nnunet-warmer` command: `main`, then exit without unloading nnU-Net and torch (a second
    of teardown per call, a scheduler's `status` gate included); what the command wrote is closed by then."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BrokenPipeError):
            stream.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.update(profile_environment(getattr(args, "shapes", "default")))
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
    try:
        return int(args.func(args))
    except UserError as e:
        _stderr(f"nnunet-warmer: error: {e}")
        return 2
    except WarmError as e:
        _stderr(f"nnunet-warmer: failed: {e}")
        return 1
    except KeyboardInterrupt:
        _stderr("nnunet-warmer: interrupted")
        return 130
    except BrokenPipeError:  # `nnunet-warmer list | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        _stderr(f"nnunet-warmer: error: {e.strerror}{where}; the partial write was removed: free space on "
                f"that file system (or raise the quota) or pass another --cache-dir")
        return 2
