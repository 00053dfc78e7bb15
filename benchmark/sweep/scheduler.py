"""`CellASHA`: asynchronous successive halving (ASHA, Li et al. 2018) with one set of rungs per cell.

Ray's `ASHAScheduler` keeps one set of rungs for the whole experiment, so in a multi-cell sweep it would
compare a Kvasir trial's validation loss with a BUSI trial's: different datasets, different scales. Here
every cell (`config["cell_id"]`) has its own rungs, so a trial only competes with its own study's trials.

Rules (spec `execution: {scheduler: asha, grace_period: G, reduction_factor: R}`):
- the metric is `val_loss` (mode min), reported by the trial after every epoch; progress is `epoch + 1`,
  the epochs trained (so a resumed trial keeps its place);
- rungs sit at G, G*R, G*R^2, ... epochs, strictly below the trial's `train.max_epochs`: stopping a trial
  at its last epoch would save nothing but its test evaluation;
- at a rung, a trial whose loss is worse than the best 1/R of the losses recorded there so far stops
  (asynchronous: early trials are never stopped for lack of company);
- a result carrying `status` is a trial's final report, never a decision point.

A stopped trial ends without its final report: the coordinator marks its last result `status: pruned`
(`benchmark.sweep.records_callback.PrunedMarker`), and `MultiCellSearcher` tells its Optuna study PRUNED (Ray's
OptunaSearch would record it COMPLETE with a truncated value: orchestration.md section 2).

Rung state lives in the driver and is not part of Tune's experiment snapshot: after a resume the rungs
start empty again (a resumed sweep prunes less, never wrongly).
"""

from __future__ import annotations

import math

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

METRIC = "val_loss"
MODE = "min"


def milestones(grace_period: int, reduction_factor: float, max_epochs: int | None) -> list[int]:
    """Rung positions in epochs trained, ascending, each < max_epochs (unbounded list capped at 32)."""
    out: list[int] = []
    m = float(grace_period)
    while len(out) < 32:
        rung = int(math.ceil(m - 1e-9))
        if max_epochs is not None and rung >= max_epochs:
            break
        if not out or rung > out[-1]:
            out.append(rung)
        m *= reduction_factor
    return out


class CellASHA(FIFOScheduler):
    def __init__(self, grace_period: int = 2, reduction_factor: float = 2.0, metric: str = METRIC,
                 mode: str = MODE):
        super().__init__()
        if grace_period < 1 or reduction_factor <= 1:
            raise ValueError("CellASHA needs grace_period >= 1 and reduction_factor > 1")
        self.grace_period = int(grace_period)
        self.reduction_factor = float(reduction_factor)
        self._metric = metric
        self._mode = mode
        self.rungs: dict[str, dict[int, dict[str, float]]] = {}  # cell -> rung -> {trial_id: score}
        self.stopped: dict[str, tuple[str, int]] = {}  # trial_id -> (cell, epochs trained when stopped)

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # fixed metric and mode (the Tuner declares none; see MultiCellSearcher)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if "status" in result:
            return TrialScheduler.CONTINUE
        epoch, value = result.get("epoch"), result.get(self._metric)
        if not _number(epoch) or not _number(value):
            return TrialScheduler.CONTINUE
        # Higher score = better; a NaN loss is the worst possible.
        score = -math.inf if math.isnan(value) else (-value if self._mode == "min" else value)
        trained = int(epoch) + 1
        config = trial.config or {}
        cell = str(config.get("cell_id", ""))
        max_epochs = ((config.get("trial") or {}).get("train") or {}).get("max_epochs")
        rungs = self.rungs.setdefault(cell, {})
        for rung in reversed(milestones(self.grace_period, self.reduction_factor, max_epochs)):
            recorded = rungs.setdefault(rung, {})
            if trained < rung or trial.trial_id in recorded:
                continue
            action = TrialScheduler.CONTINUE
            if recorded:
                finite = [v for v in recorded.values() if not math.isinf(v)] or list(recorded.values())
                cutoff = float(np.percentile(finite, (1 - 1 / self.reduction_factor) * 100))
                if score < cutoff:
                    action = TrialScheduler.STOP
                    self.stopped[trial.trial_id] = (cell, trained)
            recorded[trial.trial_id] = score
            return action
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return f"CellASHA (per cell, {self._metric} {self._mode}): {len(self.stopped)} trials stopped"


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
