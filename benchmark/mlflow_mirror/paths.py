"""Re-point a run directory's MLflow artifact paths after the directory was copied or moved.

MLflow stores absolute artifact locations (`file:///<run dir>/mlartifacts/...`) in the tracking DB; its
API has no call to change them, and a relative location is made absolute when the experiment is created.
A run directory copied to another machine would therefore show the old machine's paths (or, worse, read
the old copy's files while it still exists). This rewrites the prefix in the run directory's own
`mlflow.db` to where the directory is now. `tunevlseg run` (resuming), `tunevlseg tables` and
`make mlflow-ui` call it; by hand:

    python -m benchmark.mlflow_mirror.paths RUN_DIR

Only the default local store is touched (`<run dir>/mlflow.db` with artifacts in `<run dir>/mlartifacts`);
a tracking server keeps its own artifact store and needs nothing.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from benchmark.results.run_dir import MLFLOW_ARTIFACTS, RunDir

# (table, column) pairs of MLflow's SQL schema that hold artifact URIs.
_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"))


def repoint(run_dir: str | Path) -> int:
    """Rewrite artifact URIs under another folder's `mlartifacts` to this run directory's; returns how many
    rows changed (0 when the directory has not moved or has no mlflow.db)."""
    rd = RunDir(run_dir)
    db = rd.mlflow_db
    if not db.is_file():
        return 0
    new = rd.mlflow_artifacts.resolve().as_uri()
    con = sqlite3.connect(str(db), timeout=30)
    try:
        olds = set()
        for (loc,) in con.execute("SELECT artifact_location FROM experiments"):
            if isinstance(loc, str) and loc.rstrip("/").endswith("/" + MLFLOW_ARTIFACTS) and loc.rstrip("/") != new:
                olds.add(loc.rstrip("/"))
        changed = 0
        with con:
            for old in olds:
                for table, col in _COLUMNS:
                    cur = con.execute(f"UPDATE {table} SET {col} = ? || substr({col}, ?) "  # fixed names, no input
                                      f"WHERE {col} = ? OR substr({col}, 1, ?) = ?",
                                      (new, len(old) + 1, old, len(old) + 1, old + "/"))
                    changed += cur.rowcount
        return changed
    finally:
        con.close()


def experiment_ids(run_dir: str | Path) -> list[str]:
    """The ids of the (live) experiments in a run directory's own store, MLflow's `Default` left out."""
    db = RunDir(run_dir).mlflow_db
    if not db.is_file():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return [str(i) for (i,) in con.execute("SELECT experiment_id FROM experiments WHERE name != 'Default' "
                                               "AND lifecycle_stage = 'active' ORDER BY experiment_id")]
    except sqlite3.Error:
        return []
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    """Re-point, then print the UI address of the sweep's runs (`make mlflow-ui` runs this first)."""
    from benchmark.mlflow_mirror.tags import ui_link

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m benchmark.mlflow_mirror.paths RUN_DIR", file=sys.stderr)
        return 2
    n = repoint(args[0])
    print(f"{args[0]}: {n} MLflow artifact path(s) re-pointed" if n else f"{args[0]}: MLflow artifact paths are current")
    ids = experiment_ids(args[0])
    print(f"open {ui_link(ids[0] if len(ids) == 1 else None)}  (the runs in MLflow's model-training view)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
