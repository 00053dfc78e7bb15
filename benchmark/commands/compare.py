"""`tunevlseg compare RUN REF`: did RUN reproduce REF (two runs of one spec), within each cell's noise?

Exit 0: the runs agree within noise; 1: a cell's selected test Dice differs by more (the cells are named);
2: bad input (a path that is no run directory, or two runs of different plans). Torch-free.
"""

from __future__ import annotations

import argparse

NAME = "compare"
HELP = "compare a run with a reference run of the same spec: identical trials, |delta Dice| against noise, verdict"
DESCRIPTION = (
    "Compare RUN with REF (two run directories of one spec, e.g. your `make benchmark` run and the committed "
    "results/mini): identical trials k/N, same hyperparameters k/N, the |delta test Dice| per trial and per "
    "selected cell, each cell measured against its own spread in REF (its trials' std, its std over seeds "
    "where REF reran it), Kendall's tau of Table 3's rows, and one verdict line. Exit 0 = agree within noise, "
    "1 = a cell differs beyond it, 2 = bad input. docs/reproducibility.md explains the rule.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="the run directory to check (<storage>/<spec>)")
    p.add_argument("ref", metavar="REF", help="the reference run directory of the same spec (e.g. results/mini)")
    p.add_argument("--z", type=float, default=2.0,
                   help="a cell is beyond noise when |delta| > Z * sqrt(2) * its spread (default 2)")
    p.add_argument("--show", type=int, default=10, metavar="N", help="cells to list, farthest first (default 10)")


def run(args: argparse.Namespace) -> int:
    from benchmark.results.compare import compare_runs, render

    result = compare_runs(args.run, args.ref, z=args.z)
    print("\n".join(render(result, show=args.show)))
    return 0 if result.agree else 1
