"""A run directory that was moved or copied keeps working: the driver notices the new place, re-points the
run's own MLflow store (artifact paths), and re-points what Ray Tune restores from its snapshot (the
callbacks and searcher pickled at the first start, and the search generator's storage path).

Nothing is written to the old path; a copy's files are its own, so the original stays untouched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from benchmark.plan.spec import Selection
from benchmark.results.run_dir import TUNE_DIR, RunDir
from benchmark.sweep.progress import say
from trainables.config import ConfigError


def repoint_store(run_dir: Path) -> None:
    """The run's own MLflow store follows a moved run directory; a store that is not a database any more
    (torn by a full disk, overwritten) is one line: the mirror is rebuilt from Parquet."""
    import sqlite3

    from benchmark.mlflow_mirror.paths import repoint

    try:
        repoint(run_dir)
    except sqlite3.DatabaseError as e:
        db = RunDir(run_dir).mlflow_db
        raise ConfigError(f"{db} is not a readable MLflow database ({e}); move it aside (e.g. to {db.name}.broken) "
                          "and rerun: the mirror is rebuilt from the Parquet rows (tunevlseg mlflow sync)") from None


def note_location(run_dir: Path, state: dict[str, Any]) -> str | None:
    """Where this run directory was last driven from; returns the old path when it moved or was copied.
    The run's own MLflow store is re-pointed by `repoint_store` (benchmark/mlflow_mirror/paths.py, the one
    implementation; a copy's DB is its own file, so the original stays untouched), Tune's snapshots by
    `repoint_restored`."""
    here = str(run_dir.resolve())
    before = state.get("run_dir")
    if before == here:
        return None
    if before:
        say(f"run directory moved from {before} to {here}: continuing here, nothing is written to the old path")
    state["run_dir"] = here
    RunDir(run_dir).write_plan_state(state)
    return before


def repoint_restored(tuner, callbacks: list, run_dir: Path, moved_from: str | None, rule: Selection | None = None,
                     optuna_url: str | None = None) -> None:
    """A restored Tuner brings back the callbacks and searcher pickled at the first start, with the run
    directory (and MLflow URI) of that start. Tune re-points its own trials to the restored path; ours are
    replaced with the ones built by this driver (their state is rebuilt from Parquet and MLflow anyway),
    and the searcher is told where the run directory is now (its `restore` keeps that path)."""
    internal = getattr(tuner, "_local_tuner", None)
    if internal is None or not hasattr(internal, "_run_config"):
        raise RuntimeError("Ray Tune's Tuner changed: cannot re-point the restored callbacks "
                           "(benchmark.sweep.relocation.repoint_restored)")
    internal._run_config.callbacks = callbacks
    searcher = getattr(internal._tune_config, "search_alg", None)
    if searcher is not None and hasattr(searcher, "run_dir"):
        searcher.run_dir = str(run_dir)
        searcher.optuna_storage = optuna_url  # this driver's (--optuna-storage, else the recorded one); kept by restore
        searcher.driver_storage = True
        if rule is not None and getattr(searcher, "reseeds", None) is not None:
            searcher.reseed_rule = rule  # applied again after the searcher restores its snapshot (searcher.restore)
            searcher.reseeds.adopt(rule)
    repoint_search_generator(run_dir / TUNE_DIR, run_dir)


def repoint_search_generator(exp_path: Path, run_dir: Path) -> None:
    """Tune's SearchGenerator snapshot (`search_gen_state-*.json`, cloudpickle) holds the Experiment of the
    first start, whose StorageContext names the old run directory; every trial created after the restore
    takes that storage and fails with "Unable to set up cluster storage" (or writes to the old place). Tune
    re-points the trials it restores but not this one: the newest snapshot, the one Tune restores, is
    rewritten with the storage path of `run_dir`."""
    import ray.cloudpickle as cloudpickle

    files = sorted(exp_path.glob("search_gen_state-*.json"))
    if not files:
        return
    newest = files[-1]  # Tune restores max(paths)
    state = cloudpickle.loads(newest.read_bytes())
    if not isinstance(state, dict):
        return
    storage = getattr(state.get("experiment"), "storage", None)
    here = Path(run_dir).as_posix()  # as Tune.restore derives it for the trials it re-points
    changed = storage is not None and getattr(storage, "storage_fs_path", here) != here
    if changed:
        storage.storage_fs_path = here  # the same object as experiment.spec["storage"] (one pickle)
    if state.get("finished"):
        # The generator stops asking once the searcher said FINISHED. A rerun may have more to ask for
        # (reruns over seeds under a corrected selection rule); a searcher with nothing left says FINISHED
        # again at once.
        state["finished"], changed = False, True
    if not changed:
        return
    tmp = newest.with_name(f".{newest.name}.tmp")
    tmp.write_bytes(cloudpickle.dumps(state))
    os.replace(tmp, newest)
