"""`nnunet-warmer list`: dry run, every compiled call per target with exact shapes."""

from __future__ import annotations

import argparse

from warmer.cli.options import add_target_options, emit_json, job_environment, target_request


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="dry run: every compiled call per target, with exact shapes")
    add_target_options(p, cache=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from warmer.pipeline.calls import plan_calls, variant_paths
    from warmer.values.targets import select_targets

    dp, targets = select_targets(target_request(args), dry_run=True)
    profile = job_environment(args).profile
    listing = [{"target": t.to_dict(), "label": t.label, "variant_paths": variant_paths(dp, t),
                "calls": [c.to_dict() for c in plan_calls(dp, t, profile)]} for t in targets]
    if args.json:
        emit_json({"plans_file": str(dp.plans_file), "targets": listing})
        return 0
    for target in targets:
        cm = dp.configuration(target.configuration)
        print(f"{target.label}  batch {target.batch_per_rank} per rank on {target.device}, patch "
              f"{'x'.join(str(p) for p in cm.patch_size)}, {len(cm.pool_op_kernel_sizes)} stages")
        print(f"  paths: {'; '.join(variant_paths(dp, target))}")
        for call in plan_calls(dp, target, profile):
            inputs = ", ".join(str(t) for t in call.inputs)
            outputs = ", ".join(str(t) for t in call.outputs)
            times = f" x{call.calls_per_step}" if call.calls_per_step > 1 else ""
            print(f"  {call.phase:17} {call.function:9} {call.mode:30} ({inputs}) -> {outputs}{times}"
                  f"  [{call.note}]")
    return 0
