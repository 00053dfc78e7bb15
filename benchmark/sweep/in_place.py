"""Ray's own `Tuner.restore` of a copied or moved run directory: stop before anything is written to the original.

A restored Tuner unpickles the callbacks and searcher of the first start from `tuner.pkl`, and Tune's search
generator snapshot keeps the storage of that start: they write Parquet rows, MLflow runs, `optuna.db` and new
trials' directories at the path the run was started at. Tune re-points only the trials it restores (to the
path `Tuner.restore` was given). `tunevlseg run --storage NEW` replaces and re-points all of them
(relocation `repoint_restored`); a direct `Tuner.restore(copy, ...).fit()` cannot, since Tune hands callbacks
neither the experiment path nor a hook before its first step.

`RestoredInPlace`, the first callback of every sweep, compares the experiment path of the trials Tune restored
with the run directory the callbacks were made for, at Tune's first step (before any trial starts or any
callback writes), and stops the sweep with one line naming the supported way when they differ. On the
original path, or through `tunevlseg run`, it does nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from ray.tune import Callback

from benchmark.results.run_dir import TUNE_DIR


class RunDirMoved(RuntimeError):
    """A restored experiment whose callbacks would write to another run directory."""


def _experiment_path(trial) -> str | None:
    try:
        path = trial.storage.experiment_fs_path
    except Exception:  # noqa: BLE001 - a trial without storage yet
        return None
    return path if path and os.path.isabs(path) else None


class RestoredInPlace(Callback):
    def __init__(self, run_dir: str, hint: str = "tunevlseg run SPEC --storage <the copy's parent folder>"):
        self.run_dir = str(Path(run_dir).resolve())
        self.hint = hint
        self._checked = False

    def __getstate__(self):
        return {**self.__dict__, "_checked": False}

    def on_step_begin(self, iteration, trials, **info):
        if self._checked:
            return
        self._checked = True
        want = Path(self.run_dir) / TUNE_DIR
        for trial in trials:
            path = _experiment_path(trial)
            if path is not None and Path(path).resolve() != want:
                raise RunDirMoved(
                    f"this Tune experiment was restored from {Path(path).parent} but its callbacks and searcher "
                    f"write to {self.run_dir} (where the run was started); nothing was written. Resume a copied "
                    f"or moved run directory with `{self.hint}`, which re-points them")
