"""`tunevlseg space LEARNER [--json]`: the hyperparameters a learner's cells search (paper Table 2)."""

from __future__ import annotations

import json

NAME = "space"
HELP = "print a learner's search space (paper Table 2, or the original code's with --space reference)"


def add_arguments(parser) -> None:
    parser.add_argument("learner", help="learner name, e.g. maple")
    parser.add_argument("--space", default="paper", help="paper (Table 2, default) or reference (the original code)")
    parser.add_argument("--json", action="store_true", help="print as JSON")


def run(args) -> int:
    from benchmark.plan import search_space
    from trainables.catalog import LEARNERS

    LEARNERS.get(args.learner)  # unknown learner -> one-line error listing the allowed ones
    params = search_space.params_for(args.learner, args.space)
    tpe = search_space.ORIGINAL_TPE
    sampler = {"sampler": "TPE", "seed": search_space.seed_for(args.learner) if params else None,
               "n_startup_trials": tpe.n_startup_trials, "multivariate": tpe.multivariate,
               "trials_per_cell": search_space.ORIGINAL_TRIALS_PER_CELL if params else 1,
               "objective": "last-epoch val_loss, minimised"}
    if args.json:
        print(json.dumps({"learner": args.learner, "space": args.space, "params": [p.as_dict() for p in params],
                          "sampler": sampler}, indent=1))
        return 0
    if not params:
        print(f"{args.learner}: not searched; one trial with the spec's fixed settings")
        return 0
    print(f"{args.learner} ({args.space} space): TPE seed {sampler['seed']}, multivariate, "
          f"{tpe.n_startup_trials} random start-up trials, {sampler['trials_per_cell']} trials per cell")
    width = max(len(p.name) for p in params)
    for p in params:
        print(f"  {p.name:<{width}}  {p.domain():<32} -> {p.target}")
    return 0
