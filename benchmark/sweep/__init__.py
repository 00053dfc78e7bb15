"""Stage 2: the sweep on Ray Tune: coordinator, Ray session, run state, per-cell searcher and ASHA, preflight, storage
rules. The MLflow mirror it feeds is `benchmark.mlflow_mirror`."""
