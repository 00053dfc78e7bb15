"""The MLflow mirror of a run: MLflow is a view of the Parquet rows, never the source of truth. Driver-side,
torch-free; outside this package only the Ray session imports `mlflow` (to quieten its logger), and the URI
rules are benchmark/sweep/storage.py's.

- tracking.py  the live mirror (`MLflowMirror`) and its Tune callback: one run per trial under its cell's
               parent run under the sweep's run
- tags.py      what every run is tagged with (system tags, a cell's params, the objective's words, UI links);
               Ray-free
- backfill.py  the mirror rebuilt from Parquet (`tunevlseg mlflow sync RUN`, and at every sweep start)
- paths.py     a moved or copied run directory's own store re-pointed (`python -m benchmark.mlflow_mirror.paths RUN`)
- report.py    `tunevlseg tables` / `embeddings` outputs logged to the sweep's run
"""
