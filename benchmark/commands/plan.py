"""`tunevlseg plan SPEC [--json]`: the cells and trials a spec expands to, without running anything."""

from __future__ import annotations

import json

NAME = "plan"
HELP = "list the cells (VLSM x learner x dataset x variant) and trials of a spec without running anything"


def add_arguments(parser) -> None:
    parser.add_argument("spec", help="experiment spec, e.g. experiments/table3.yaml")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--data", metavar="DIR", help="dataset root (datasets live in DIR/<dataset>)")


def run(args) -> int:
    from benchmark.matrix import build_plan
    from benchmark.spec import load_spec

    spec = load_spec(args.spec)
    if args.data:
        spec = spec.with_data_root(args.data)
    plan = build_plan(spec)
    if args.json:
        print(json.dumps({"spec": spec.name, "trainable": spec.trainable, "search_space": spec.search.space,
                          "cells": [c.summary() for c in plan.cells], "total_cells": len(plan.cells),
                          "total_trials": plan.total_trials}, indent=1))
        return 0
    width = max(len(c.id) for c in plan.cells)
    print(f"{spec.name}: {len(plan.cells)} cells, {plan.total_trials} trials (search space: {spec.search.space})")
    print(f"{'cell':<{width}}  trials  seed    cpu   gpu  searched")
    for c in plan.cells:
        searched = ", ".join(p.name for p in c.params) or "- (fixed settings)"
        seed = str(c.seed) if c.params else "-"
        res = f"{c.resources['cpu']:>4g} {c.resources['gpu']:>5g}"
        print(f"{c.id:<{width}}  {c.trials:>6}  {seed:<6} {res}  {searched}")
    return 0
