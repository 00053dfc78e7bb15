"""The driver-side Tune callbacks that record trials: a trial's Parquet row the moment it finishes, the
cells' selected trials, the progress line per finished trial (`RecordsCallback`), and the `pruned` status of
a trial the scheduler stopped (`PrunedMarker`).

Rows of trials the restored experiment no longer knows (started after its last snapshot, then re-run under a
new id with the same parameters) are dropped before the first step (the orphan rule, `RunDir.drop_orphans`),
so a resumed sweep never holds duplicates. Pickled by reference into the experiment's `tuner.pkl`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from benchmark.plan.spec import Selection
from benchmark.results import records
from benchmark.results.run_dir import TUNE_DIR, RunDir, select
from benchmark.sweep.failures import trial_error_text
from benchmark.sweep.progress import eta_text, fmt, hms, say
from benchmark.sweep.snapshots import RestoreLost
from trainables.protocol import STATUS_OK, STATUS_PRUNED


class PrunedMarker(Callback):
    """Marks the last result of a trial the scheduler stopped as `status: pruned` (in place: Tune makes
    it the trial's last result), so the searcher, the Parquet row and the MLflow run all see it.

    A stopped trial is recognised by Tune's `done: True` on a result that is not a final report (every
    final report carries `status`; a trial that ends normally sends no further result to callbacks).
    Listed first among the callbacks."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("done") and "status" not in result:
            result["status"] = STATUS_PRUNED
            result.setdefault("error", "")
            if isinstance(result.get("epoch"), int):
                result.setdefault("epochs_run", result["epoch"] + 1)


class RecordsCallback(Callback):
    """Writes a trial's Parquet row as soon as it finishes, keeps `selected.parquet` current and
    prints the progress lines. State is rebuilt from the Parquet files at setup, so a restored
    experiment (whose callbacks are unpickled from `tuner.pkl`) continues where it left off."""

    def __init__(self, run_dir: str, spec_name: str, cells: dict[str, dict[str, Any]], select: dict[str, str],
                 expect_trials: frozenset[str] | None = None):
        self.run_dir = run_dir
        self.spec_name = spec_name
        self.cells = cells  # cell_id -> {"keys": {...}, "planned": int}
        self.select = select  # {"by", "mode", "report"}
        # The trial ids of the snapshot being restored (benchmark/sweep/snapshots.py; empty for a new
        # experiment): the restored experiment must know every one before any row counts as an orphan.
        self.expect_trials = frozenset(expect_trials or ())
        self._reset()

    def _reset(self):
        self._rows: dict[str, dict[str, dict]] = {}
        self._started: dict[str, Any] = {}
        self._prov: dict[str, Any] = {}
        self._pruned = False
        self._t0 = time.time()
        self._durations: list[float] = []  # seconds of the trials this driver saw finish (the ETA)
        self._slots = 1  # the most trials seen running at once

    def __getstate__(self):
        state = dict(self.__dict__)
        for k in ("_rows", "_started", "_prov", "_pruned", "_t0", "_durations", "_slots"):
            state.pop(k, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def setup(self, **info):
        self._reset()
        self._prov = records.provenance()
        existing = RunDir(self.run_dir).rows()
        self._rows = {cid: existing[cid] for cid in self.cells if cid in existing}
        done, total = self._counts()
        say(f"sweep {self.spec_name}: {len(self.cells)} cells, {total} trials planned, {done} already recorded")

    # -- bookkeeping
    def _counts(self) -> tuple[int, int]:
        return (sum(len(r) for r in self._rows.values()), sum(c["planned"] for c in self.cells.values()))

    def _cells_done(self) -> int:
        return sum(1 for cid, c in self.cells.items() if len(self._rows.get(cid, {})) >= c["planned"])

    def _prune(self, trials) -> None:
        """Drop rows of trials this experiment does not know (the orphan rule, see the module docstring)."""
        known = {t.trial_id for t in trials}
        lost = getattr(self, "expect_trials", frozenset()) - known
        if lost:  # Tune started the experiment over (a snapshot it could not restore): never drop anything
            raise RestoreLost(f"Ray Tune did not restore the experiment in {self.run_dir}/{TUNE_DIR} ({len(lost)} of "
                              f"its trials unknown after the restore); nothing was dropped")
        self._rows = RunDir(self.run_dir).drop_orphans(self._rows, known)
        self._pruned = True

    def _write_cell(self, cid: str) -> None:
        RunDir(self.run_dir).write_cell(cid, self._rows.get(cid, {}).values())

    def _write_selected(self) -> None:
        RunDir(self.run_dir).write_selected(self.cells, self._rows, Selection(**self.select))

    def on_step_begin(self, iteration, trials, **info):
        # Before the searcher is asked for trials (which rewrites optuna.db) and before Tune's first snapshot
        # of this session (which every later rerun would restore).
        if not self._pruned:
            self._prune(trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        prev = self._rows.get(trial.config["cell_id"], {}).get(trial.trial_id)
        self._started.setdefault(trial.trial_id, prev["started_at"] if prev else records.now_utc())

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trials, trial, error=None)
        _retire_error_files(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trials, trial, error=trial_error_text(trial))

    def _record(self, trials, trial, error: str | None) -> None:
        if not self._pruned:
            self._prune(trials)
        cfg = trial.config
        cid = cfg["cell_id"]
        row = records.trial_row(
            spec=self.spec_name, cell=self.cells[cid]["keys"], cell_id=cid, trial_index=cfg["trial_index"],
            trial_id=trial.trial_id, hp=cfg.get("hp", {}), result=trial.last_result, error=error,
            prov=self._prov, started_at=self._started.get(trial.trial_id), finished_at=records.now_utc(),
            seed=cfg.get("trial", {}).get("train", {}).get("seed"), reseed=cfg.get("reseed"))
        self._rows.setdefault(cid, {})[trial.trial_id] = row
        self._write_cell(cid)
        self._write_selected()
        self._durations.append(row.get("seconds"))
        self._slots = max(self._slots, sum(t.status == "RUNNING" or t is trial for t in trials))
        self._progress(cid, row)

    def _progress(self, cid: str, row: dict) -> None:
        done, total = self._counts()
        by = self.select["by"]
        value = row.get(by)
        what = f"{by}={value:.4g}" if isinstance(value, (int, float)) and value is not None else ""
        if row["status"] == STATUS_PRUNED:
            what = f"PRUNED after {row.get('epochs_run')} epochs (val_loss={fmt(row.get('val_loss'))})"
        elif row["status"] != STATUS_OK:
            what = f"{row['status'].upper()}: {(row.get('error') or '')[:120]}"
        best = select(list(self._rows[cid].values()), Selection(**self.select))
        best_txt = f"best #{best['trial_index']} {by}={best[by]:.4g}" if best else "no ok trial yet"
        n_cell = len(self._rows[cid])
        elapsed = time.time() - self._t0
        eta = eta_text(self._durations, total - done, self._slots)
        say(f"[{hms(elapsed)}] {cid} #{row['trial_index']} {row['status']} {what} | cell "
            f"{n_cell}/{self.cells[cid]['planned']} {best_txt} | trials {done}/{total}, cells "
             f"{self._cells_done()}/{len(self.cells)} done" + (f", {eta}" if eta else ""))



def _retire_error_files(trial) -> None:
    """A trial that failed, was retried (in-run under max_failures, or by a rerun's resume_errored) and then
    finished keeps Tune's error.txt/error.pkl: Tune forgets them on requeue but leaves the files. The text
    is kept as error.retried.txt (what happened before the retry), the pickle removed."""
    from ray.tune.result import EXPR_ERROR_FILE, EXPR_ERROR_PICKLE_FILE

    dirs = set()
    for get in (lambda: trial.local_path, lambda: trial.storage.trial_fs_path):
        try:
            if get():
                dirs.add(Path(get()))
        except Exception:  # noqa: BLE001 - no storage yet
            pass
    for d in dirs:
        if (d / EXPR_ERROR_FILE).is_file():
            os.replace(d / EXPR_ERROR_FILE, d / "error.retried.txt")
        (d / EXPR_ERROR_PICKLE_FILE).unlink(missing_ok=True)
    meta = getattr(trial, "run_metadata", None)
    if meta is not None and (meta.error_filename or meta.pickled_error_filename):
        meta.error_filename = meta.pickled_error_filename = None
        meta.invalidate_cache()

