"""Early stopping in sweeps: per-cell ASHA (benchmark/sweep/scheduler.py), PRUNED in each cell's Optuna study,
and a complete Parquet row (status `pruned`) for every stopped trial."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from benchmark.plan.spec import spec_from_dict
from benchmark.results.run_dir import RunDir
from benchmark.sweep.scheduler import CellASHA, milestones
from trainables.config import ConfigError

CONTINUE, STOP = "CONTINUE", "STOP"


def _trial(tid: str, cell: str, max_epochs: int = 8):
    return SimpleNamespace(trial_id=tid, config={"cell_id": cell, "trial": {"train": {"max_epochs": max_epochs}}})


def test_rungs_stay_below_the_last_epoch():
    assert milestones(1, 2, 8) == [1, 2, 4]  # never 8: stopping at the last epoch saves nothing
    assert milestones(2, 3, 20) == [2, 6, 18]
    assert milestones(3, 2, 3) == []  # grace period not below max_epochs: nothing to decide
    assert milestones(1, 1.5, 5) == [1, 2, 3, 4]  # ceil(1.5), ceil(2.25), ceil(3.375); ceil(5.06) = 6 >= 5
    assert milestones(1, 1.2, 4) == [1, 2, 3]  # ceil(1.2) = ceil(1.44) = 2 appears once


def test_each_cell_has_its_own_rungs_and_final_reports_never_stop():
    s = CellASHA(grace_period=1, reduction_factor=2)
    # Cell A: low losses. A cell-B trial with a much higher loss is not compared with them.
    assert s.on_trial_result(None, _trial("a1", "A"), {"epoch": 0, "val_loss": 0.10}) == CONTINUE
    assert s.on_trial_result(None, _trial("a2", "A"), {"epoch": 0, "val_loss": 0.50}) == STOP
    assert s.on_trial_result(None, _trial("b1", "B"), {"epoch": 0, "val_loss": 5.0}) == CONTINUE
    assert s.on_trial_result(None, _trial("b2", "B"), {"epoch": 0, "val_loss": 4.0}) == CONTINUE
    assert s.on_trial_result(None, _trial("b3", "B"), {"epoch": 0, "val_loss": 9.0}) == STOP
    # Between rungs (2 epochs trained is rung 2, 3 is not a rung) and final reports: no decision.
    assert s.on_trial_result(None, _trial("b2", "B"), {"epoch": 2, "val_loss": 99.0}) == CONTINUE
    assert s.on_trial_result(None, _trial("b1", "B"), {"epoch": 7, "val_loss": 99.0, "status": "ok"}) == CONTINUE
    # A NaN loss is the worst score at its rung.
    assert s.on_trial_result(None, _trial("b4", "B"), {"epoch": 0, "val_loss": float("nan")}) == STOP
    assert set(s.stopped) == {"a2", "b3", "b4"}


def test_spec_accepts_asha_and_rejects_bad_settings():
    base = {"name": "x", "axes": {"vlsm": ["clipseg"], "learner": ["coop"], "dataset": ["kvasir"]}}
    spec = spec_from_dict({**base, "execution": {"scheduler": "asha", "grace_period": 3, "reduction_factor": 3}})
    assert spec.execution.scheduler == "asha" and spec.execution.grace_period == 3
    assert spec_from_dict(base).execution.scheduler == "none"
    with pytest.raises(ConfigError, match="scheduler"):
        spec_from_dict({**base, "execution": {"scheduler": "hyperband"}})
    with pytest.raises(ConfigError, match="reduction_factor"):
        spec_from_dict({**base, "execution": {"scheduler": "asha", "reduction_factor": 1}})


@pytest.mark.ray
def test_asha_sweep_prunes_trials_tells_optuna_and_records_every_trial(tmp_path, local_ray):
    import optuna

    from benchmark.sweep.coordinator import run_sweep
    from benchmark.sweep.searcher import load_studies

    epochs = 6
    spec = spec_from_dict({
        "name": "asha", "trainable": "trainables.fake.fake_trainable",
        "axes": {"vlsm": ["clipseg"], "learner": ["coop", "maple"], "dataset": ["kvasir"]},
        "fixed": {"train": {"max_epochs": epochs}, "fake": {"epoch_seconds": 0.02}},
        "search": {"trials": 8, "n_startup_trials": 8, "sampler": "random"},
        "resources": {"cpu": 1, "gpu": 0},
        "execution": {"max_failures": 0, "reuse_actors": True, "scheduler": "asha", "grace_period": 1,
                      "reduction_factor": 2},
        "data": {"roots": {"kvasir": str(tmp_path)}},
        "tracking": {"mlflow": False},
    })
    result = run_sweep(spec, tmp_path / "runs")
    assert result.done == result.planned == 16 and result.failed == 0

    rows = RunDir(tmp_path / "runs" / "asha").frame()
    assert len(rows) == 16 and set(rows["status"]) <= {"ok", "pruned"}
    pruned, ok = rows[rows["status"] == "pruned"], rows[rows["status"] == "ok"]
    assert len(pruned) >= 2, "ASHA stopped no trial"
    assert len(ok) >= 2  # the first trial at every rung always continues
    # A pruned row is complete: keys, hyperparameters, the epochs it ran, its last val loss and its time.
    assert (pruned["epochs_run"] < epochs).all() and pruned["val_loss"].notna().all()
    assert pruned["seconds"].notna().all() and pruned["hp_lr"].notna().all()
    assert pruned["test_dice"].isna().all()
    assert (ok["epochs_run"] == epochs).all() and ok["test_dice"].notna().all()

    from benchmark.sweep.studies import load_studies as stored_studies

    searcher_studies = load_studies(str(tmp_path / "runs" / "asha" / "tune"))
    stored = stored_studies(tmp_path / "runs" / "asha")  # Optuna's storage holds the same, PRUNED included
    assert sorted(stored) == sorted(searcher_studies)
    for cid, study in [*searcher_studies.items(), *stored.items()]:
        states = [t.state for t in study.trials]
        cell = rows[rows["cell_id"] == cid]
        assert states.count(optuna.trial.TrialState.PRUNED) == (cell["status"] == "pruned").sum()
        assert states.count(optuna.trial.TrialState.COMPLETE) == (cell["status"] == "ok").sum()
        for t in study.trials:
            if t.state == optuna.trial.TrialState.PRUNED:
                # Told with its last per-epoch loss, at the step it stopped.
                assert t.intermediate_values and t.value == t.intermediate_values[t.last_step]
        assert study.best_trial.state == optuna.trial.TrialState.COMPLETE
