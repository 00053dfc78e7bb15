"""Stage 2: the sweep on Ray Tune: coordinator, per-cell searcher and ASHA, MLflow mirror, preflight, storage rules."""
