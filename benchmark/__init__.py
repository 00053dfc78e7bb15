"""Driver side of tunevlseg, in its three stages:

- `benchmark.plan`: experiment specs, the search space, the (VLSM x learner x dataset x variant) matrix, the cost estimate;
- `benchmark.sweep`: the coordinator on Ray Tune, the per-cell searcher and ASHA, the cluster preflight and the
  storage rules;
- `benchmark.mlflow_mirror`: the MLflow mirror of a run (live, rebuilt from Parquet, `tables`' outputs);
- `benchmark.results`: trial records (Parquet), the run directory, the selection rule, tables, figures, report.

Only `tunevlseg run` (and `predict`, `describe`, `convert-cris`, which build models) import torch; plan, space,
tables and estimate read the torch-free catalog (`trainables.catalog`).
"""

from trainables._version import __version__  # noqa: F401  (one version, defined torch-free on the worker side)
