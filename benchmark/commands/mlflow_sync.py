"""`tunevlseg mlflow sync RUN [--mlflow URI]`: fill the MLflow mirror of a run from its Parquet rows."""

from __future__ import annotations

NAME = "mlflow"
HELP = "MLflow mirror of a run: `sync RUN` backfills it from Parquet (after the server was down)"
DESCRIPTION = ("Parquet is the source of truth; MLflow mirrors it. When the tracking server was down during a sweep "
               "the mirror turned itself off; `tunevlseg mlflow sync RUN` creates the missing runs (params, per-epoch "
               "metrics, final metrics, status, artifact) and ends those left open. Idempotent.")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("sync", help="create missing MLflow runs from the run's Parquet rows (idempotent)")
    p.add_argument("run", help="a run directory, e.g. results/runs/table3")
    p.add_argument("--mlflow", metavar="URI", help="tracking URI (default: the run's sqlite mlflow.db)")


def run(args) -> int:
    from benchmark.mlflow_mirror.backfill import sync

    counts = sync(args.run, args.mlflow)
    print(f"MLflow synced from {args.run}: {counts['created']} run(s) created, {counts['ended']} ended, "
          f"{counts['unchanged']} already mirrored")
    return 0
