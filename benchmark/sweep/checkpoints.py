"""One checkpoint per finished trial: its last, which for a trial that ended normally holds only the tuned-prompt
artifact and its final result (trainables/trial.py).

During training Tune keeps the newest `execution.checkpoints_to_keep` (default 2) checkpoints of each trial,
so that the experiment snapshot always names one that still exists (Tune forces a snapshot every
`num_to_keep` checkpoints). Once a trial has finished, resume never trains it again; its earlier
checkpoints (for E2E: the full model, the optimizer's two moments and the best epoch's copy) are dead
weight, and Tune's `get_best_checkpoint` could pick one of them, without the artifact, over the final one
(the last epoch's objective ties with the final one). `KeepFinalCheckpoint` deletes them the moment the
trial completes, from disk and from Tune's bookkeeping (the next snapshot saves the trial with one
checkpoint). A driver stopped in between leaves a snapshot that still names a deleted checkpoint; the
trainable then finds the trial's final checkpoint beside it (`trainables.restore.restorable_checkpoint`).

Tune has no public call for this: the private attributes used are listed in `_manager_results`, checked
against Ray 2.60; on another layout this does nothing (more disk, nothing wrong).
"""

from __future__ import annotations

import logging

from ray.tune import Callback

logger = logging.getLogger("tunevlseg.checkpoints")


def _manager_results(trial):
    """(checkpoint manager, its results) of a trial, or (None, None) when Tune's layout is not the one known."""
    manager = getattr(getattr(trial, "run_metadata", None), "checkpoint_manager", None)
    results = getattr(manager, "_checkpoint_results", None)
    if manager is None or not isinstance(results, list) or not hasattr(manager, "_latest_checkpoint_result"):
        return None, None
    return manager, results


def drop_earlier_checkpoints(trial) -> int:
    """Delete every checkpoint of `trial` but its latest; returns how many were deleted."""
    from ray.train._internal.storage import _delete_fs_path

    manager, results = _manager_results(trial)
    latest = getattr(manager, "_latest_checkpoint_result", None)
    if manager is None or latest is None:
        return 0
    drop = [r for r in results if r is not latest]
    manager._checkpoint_results = [latest]
    for r in drop:
        try:
            _delete_fs_path(fs=r.checkpoint.filesystem, fs_path=r.checkpoint.path)
        except FileNotFoundError:
            pass
        except Exception as e:  # noqa: BLE001 - disk space is not worth a failed sweep
            logger.warning("could not delete %s: %s: %s", r.checkpoint.path, type(e).__name__, e)
    meta = getattr(trial, "run_metadata", None)
    if drop and hasattr(meta, "invalidate_cache"):
        meta.invalidate_cache()
    return len(drop)


class KeepFinalCheckpoint(Callback):
    """After a trial completes, only its last checkpoint stays (see the module docstring)."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        drop_earlier_checkpoints(trial)
