"""Ray Tune's snapshot of a run directory (`<run>/tune/`), checked before `Tuner.restore`.

Why: Ray 2.60's TuneController catches any error while it restores an experiment (a truncated
`experiment_state-*.json`, `search_gen_state-*.json` or `searcher-state-*.pkl`: an interrupted copy, a full
disk), logs "Failed to restore the run state" and starts the experiment over (only `fail_fast`, which also
makes every failed trial fatal, turns that off). A fresh experiment knows none of the recorded trials: the
orphan rule would take every Parquet row, MLflow run and Optuna trial for an orphan, and the fresh
experiment's first snapshot, newer than the torn one, is what every later rerun would restore. So the files
Tune will restore (the newest of each kind, as Tune picks them: the greatest name) are read here first, the
way Tune reads them; a file that does not load stops the driver with one line and a way out, before Tune
restores anything and before anything is written. The trial ids of the snapshot are returned: the
coordinator checks that the restored experiment knows all of them before any orphan is dropped
(`RestoreLost`).

Pickles of runs written before the module move of 2026-11-29 (`benchmark.searcher` ->
`benchmark.sweep.searcher`, ...) or before the MLflow modules moved to benchmark/mlflow_mirror/ (2026-12-03)
load through `install_module_aliases`.
"""

from __future__ import annotations

import importlib
import json
import pickle
import sys
from pathlib import Path

from trainables.config import ConfigError

TUNER_PKL = "tuner.pkl"
EXPERIMENT_STATE = "experiment_state-*.json"
SEARCH_GEN_STATE = "search_gen_state-*.json"
SEARCHER_STATE = "searcher-state-*.pkl"

# Old module -> today's, for pickles (tuner.pkl, searcher-state-*.pkl) written before the layout change of
# 2026-11-29 (commit 407f17e moved benchmark/*.py into plan/, results/, sweep/ without changing them).
LEGACY_MODULES = {
    **{f"benchmark.{m}": f"benchmark.plan.{m}" for m in ("estimate", "matrix", "search_space", "spec")},
    **{f"benchmark.{m}": f"benchmark.results.{m}" for m in ("figures", "records", "report", "selection", "tables")},
    **{f"benchmark.{m}": f"benchmark.sweep.{m}" for m in ("coordinator", "preflight", "scheduler", "searcher", "smoke")},
    # ... and the MLflow mirror's callback, in benchmark/sweep/tracking.py from 2026-11-29 to 2026-12-03.
    "benchmark.tracking": "benchmark.mlflow_mirror.tracking",
    "benchmark.sweep.tracking": "benchmark.mlflow_mirror.tracking",
}


class SnapshotError(ConfigError):
    """Tune's snapshot of the run cannot be restored; nothing was changed."""


class RestoreLost(RuntimeError):
    """The restored experiment does not know trials its snapshot holds: Tune started it over."""


def install_module_aliases() -> None:
    """Make the old module paths importable as today's modules (the same module objects), so pickles that
    name them load; a name that still exists as a real module is left alone."""
    for old, new in LEGACY_MODULES.items():
        if old in sys.modules:
            continue
        try:
            importlib.import_module(old)
        except ImportError:
            sys.modules[old] = importlib.import_module(new)


def newest(exp_path: Path, pattern: str) -> Path | None:
    files = sorted(Path(exp_path).glob(pattern), key=lambda p: p.name)
    return files[-1] if files else None


def _load(path: Path):
    data = path.read_bytes()
    if path.name == TUNER_PKL or path.name.startswith("searcher-state-"):
        return pickle.loads(data)
    if path.name.startswith("search_gen_state-"):
        import ray.cloudpickle as cloudpickle

        return cloudpickle.loads(data)
    return json.loads(data)  # experiment_state: JSON (its embedded pickles are loaded by Tune only)


def check(exp_path: str | Path, recorded: int, hint: str = "") -> frozenset[str]:
    """Load what `Tuner.restore` will load; returns the trial ids of the newest experiment state. Raises
    SnapshotError (one line) when a file does not load. `recorded`: rows in Parquet (named in the error)."""
    install_module_aliases()
    exp_path = Path(exp_path)
    files = [exp_path / TUNER_PKL] + [p for p in (newest(exp_path, pat) for pat in
                                                 (EXPERIMENT_STATE, SEARCH_GEN_STATE, SEARCHER_STATE)) if p]
    state = None
    for path in files:
        try:
            loaded = _load(path)
        except Exception as e:  # noqa: BLE001 - any failure to load is the same story for the user
            raise SnapshotError(_message(path, e, recorded, hint)) from None
        if path.name.startswith("experiment_state-"):
            state = loaded
    try:
        return frozenset(t[0]["trial_id"] if isinstance(t[0], dict) else json.loads(t[0])["trial_id"]
                         for t in (state or {}).get("trial_data", []))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise SnapshotError(_message(files[1], e, recorded, hint)) from None


def _message(path: Path, error: BaseException, recorded: int, hint: str) -> str:
    why = (str(error).strip().splitlines() or [""])[0][:120]
    rerun = f" ({hint} --force)" if hint else ""
    return (f"{path} cannot be read ({type(error).__name__}: {why}); Ray Tune would start this sweep over and lose "
            f"track of its {recorded} recorded trial(s), so nothing was changed. Put back a good copy of that file "
            f"(from a backup, or from the run directory it was copied from) and rerun, or start over with --force"
            f"{rerun}: the old results are kept under previous/")


def mark_for_retry(exp_path: str | Path, trial_ids: set[str]) -> int:
    """`run --retry-failed`: the trials `trial_ids` (failed: their rows have status error) become ERROR in the
    newest experiment state, so that `Tuner.restore(resume_errored=True)` runs them again under the same
    trial ids, with the same parameters (and Optuna trials, MLflow runs, Parquet rows), from their last
    checkpoint if any. A trial that reported its failure (a data error) ended TERMINATED for Tune, which
    would never run it again. Returns how many trials were marked."""
    path = newest(Path(exp_path), EXPERIMENT_STATE)
    if path is None or not trial_ids:
        return 0
    state = json.loads(path.read_text())
    marked = 0
    for entry in state.get("trial_data", []):
        as_text = isinstance(entry[0], str)
        trial = json.loads(entry[0]) if as_text else entry[0]
        if trial.get("trial_id") in trial_ids and trial.get("status") != "ERROR":
            trial["status"] = "ERROR"
            entry[0] = json.dumps(trial, indent=2) if as_text else trial
            marked += 1
        elif trial.get("trial_id") in trial_ids:
            marked += 1  # already ERROR (a trial that raised): resumed as it is
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)
    return marked


def restorable(exp_path: Path, run_dir: Path, recorded: int, hint: str) -> frozenset[str] | None:
    """The trial ids of the Tune snapshot that will be restored (None: a new experiment). A snapshot that
    does not load, or recorded rows (`recorded` of them) without any snapshot, stop here, before Ray changes
    anything."""
    from ray import tune

    if tune.Tuner.can_restore(str(exp_path)):
        return check(exp_path, recorded, hint)
    if recorded:
        raise SnapshotError(f"{run_dir} holds {recorded} recorded trial(s) but {exp_path} has no Ray Tune snapshot to "
                            f"resume from; a new experiment would run them again. Put back {exp_path} (from a "
                            f"backup), or start over with --force (the old results are kept under previous/)")
    return None


def retry_failed_trials(exp_path: Path, failed: set[str], expect: frozenset[str] | None) -> None:
    """`run --retry-failed`: the failed trials (`failed`: their rows have status error) of the snapshot being
    restored (`expect`) run again (`mark_for_retry`); says what it did."""
    from benchmark.sweep.progress import say

    if not failed or expect is None:
        say("--retry-failed: no failed trial to run again")
        return
    n = mark_for_retry(exp_path, failed & expect)
    say(f"--retry-failed: {n} failed trial(s) run again (same trial ids and parameters); the other rows are kept")
