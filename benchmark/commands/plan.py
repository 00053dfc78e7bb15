"""`tunevlseg plan SPEC [--json] [--estimate ...]`: the cells and trials a spec expands to, without running
anything; `--estimate` prices them in GPU-hours (benchmark/plan/estimate.py)."""

from __future__ import annotations

import json

NAME = "plan"
HELP = "list the cells (VLSM x learner x dataset x variant) and trials of a spec without running anything"


def add_arguments(parser) -> None:
    parser.add_argument("spec", help="experiment spec: a path (experiments/table3.yaml) or a shipped name (table3, mini, smoke)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--data", metavar="DIR", help="dataset root (datasets live in DIR/<dataset>)")
    est = parser.add_argument_group("cost estimate")
    est.add_argument("--estimate", action="store_true",
                     help="print the estimated GPU-hours per VLSM/learner and in total instead of the cell list")
    est.add_argument("--from", dest="from_run", metavar="RUN_DIR",
                     help="take seconds per image from a finished run (<storage>/<spec name>, its trials/*.parquet)")
    est.add_argument("--gpu-seconds-per-image", type=float, metavar="X",
                     help="whole-GPU seconds per training image for every cell (e.g. 1 / images_per_s of "
                          "benchmarks/gpu_step.py)")
    est.add_argument("--trial-overhead-s", type=float, default=0.0, metavar="S",
                     help="fixed seconds per trial (worker start, weights, data; benchmarks/fixed_cost.py) "
                          "added on top, holding the trial's slot (default 0; a --from run already includes it)")
    est.add_argument("--gpus", type=int, metavar="N", help="also print the wall time on N GPUs")


def run(args) -> int:
    from benchmark.plan.matrix import build_plan
    from benchmark.plan.spec import load_spec

    spec = load_spec(args.spec)
    if args.data:
        spec = spec.with_data_root(args.data)
    plan = build_plan(spec)
    if getattr(args, "estimate", False):
        return _estimate(args, spec, plan)
    if args.json:
        print(json.dumps({"spec": spec.name, "trainable": spec.trainable, "search_space": spec.search.space,
                          "cells": [c.summary() for c in plan.cells], "total_cells": len(plan.cells),
                          "total_trials": plan.total_trials}, indent=1))
        return 0
    width = max(len(c.id) for c in plan.cells)
    reseeds = (f", incl. {spec.select.reseed} rerun(s) per cell of its selected configuration with further seeds"
               if spec.select.reseed else "")
    print(f"{spec.name}: {len(plan.cells)} cells, {plan.total_trials} trials (search space: {spec.search.space}"
          f"{reseeds})")
    print(f"{'cell':<{width}}  trials  seed    cpu   gpu  searched")
    for c in plan.cells:
        searched = ", ".join(p.name for p in c.params) or "- (fixed settings)"
        seed = str(c.seed) if c.params else "-"
        res = f"{c.resources['cpu']:>4g} {c.resources['gpu']:>5g}"
        print(f"{c.id:<{width}}  {c.trials:>6}  {seed:<6} {res}  {searched}")
    return 0


def _estimate(args, spec, plan) -> int:
    from benchmark.plan import estimate as E
    from trainables.config import ConfigError

    x = args.gpu_seconds_per_image
    if x is not None and not (x > 0):
        raise ConfigError(f"--gpu-seconds-per-image must be a positive number of seconds, got {x}")
    if not args.trial_overhead_s >= 0:
        raise ConfigError(f"--trial-overhead-s must be >= 0, got {args.trial_overhead_s}")
    sizes_cache: dict[str, tuple[int, int]] = {}

    def sizes(ds: str) -> tuple[int, int]:
        if ds not in sizes_cache:
            sizes_cache[ds] = E.split_sizes(ds)
        return sizes_cache[ds]

    measured, overhead, label = None, args.trial_overhead_s, str(args.from_run or "")
    from benchmark.sweep import smoke

    if args.from_run and x is None and smoke.is_rehearsal(args.from_run):
        # A rehearsal's trials are short: its rates come from its measured step times (benchmark/sweep/smoke.py).
        measured, fixed, label = smoke.measured_rates(args.from_run)
        overhead = overhead or fixed
        if not measured:
            raise ConfigError(f"--from {args.from_run}: the rehearsal has no ok cell to measure")
    elif args.from_run and x is None:
        measured = E.rates_from_rows(E.read_run_rows(args.from_run), sizes)
        if not measured:
            raise ConfigError(f"--from {args.from_run}: no finished trial with seconds and epochs_run to measure")
    est = E.estimate(plan.cells, sizes=sizes, gpu_seconds_per_image=x, measured=measured,
                     run_label=label, overhead_seconds=overhead)
    from benchmark.plan.footprint import run_dir_gb  # the disk the run directory takes (a separate term)

    disk_gb, disk_notes = run_dir_gb(plan.cells, mlflow_copy=spec.tracking.mlflow and not spec.tracking.uri)
    est.notes += disk_notes
    if args.json:
        print(json.dumps(E.json_ready({"spec": spec.name, "gpu_hours": est.gpu_hours, "slot_hours": est.slot_hours,
                                       "subtotals": [{"vlsm": v, "learner": lrn, **s}
                                                     for (v, lrn), s in est.subtotals().items()],
                                       "run_dir_gb": disk_gb, "notes": est.notes}), indent=1, allow_nan=False))
        return 0
    print(E.format_estimate(est, spec.name, args.gpus))
    return 0
