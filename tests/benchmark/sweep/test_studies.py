"""Optuna's own storage mirrors the searcher's studies: appended and finished in place, rebuilt when it holds
trials the searcher's (restored) state does not know, at a path derived from the run directory."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import optuna
import pytest

from benchmark.sweep.studies import StudyStore, check_url, default_url, load_studies
from trainables.config import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _source(n_done: int, n_running: int = 0) -> optuna.Study:
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(n_done + n_running):
        t = study.ask()
        t.suggest_float("lr", 1e-4, 1e-1, log=True)
        t.set_user_attr("ray_trial_id", f"r{i}")
        if i < n_done:
            t.report(0.5, 0)
            study.tell(t, 1.0 / (i + 1))
    return study


def _stored(store: StudyStore, name: str = "cell") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=store.resolved_url)


def test_sync_appends_and_finishes_in_place(tmp_path):
    store = StudyStore(tmp_path)
    src = _source(1, 1)
    store.sync("cell", src, "objective", {"cell_id": "cell"})
    first = _stored(store)
    assert [t.state.name for t in first.trials] == ["COMPLETE", "RUNNING"]
    assert first.metric_names == ["objective"] and first.user_attrs == {"cell_id": "cell"}
    running = src.get_trials(deepcopy=False)[1]
    running_trial = optuna.Trial(src, running._trial_id)
    running_trial.report(0.25, 0)
    running_trial.set_user_attr("test_dice", 0.8)
    src.tell(running_trial, 0.3)
    store.sync("cell", src, "objective", {"cell_id": "cell"})
    after = _stored(store)
    assert after._study_id == first._study_id  # updated, not recreated: a dashboard link stays valid
    assert [(t.state.name, t.value) for t in after.trials] == [("COMPLETE", 1.0), ("COMPLETE", 0.3)]
    assert after.trials[1].intermediate_values == {0: 0.25} and after.trials[1].user_attrs["test_dice"] == 0.8


def test_sync_drops_trials_the_restored_state_does_not_know(tmp_path):
    """A driver killed after asking trial 2 restores a snapshot that knows trials 0-1 only; Tune re-runs the
    third under a new id. The stored study must not keep the orphan, and keeps links of the known ones."""
    store = StudyStore(tmp_path)
    store.sync("cell", _source(1, 2), "objective", {})
    assert store.link("cell", "r1", mlflow_run_id="m1")  # linked while it runs
    restored = _source(2)  # the snapshot: trial 1 finished, no trial 2
    t = restored.ask()
    t.suggest_float("lr", 1e-4, 1e-1, log=True)
    t.set_user_attr("ray_trial_id", "r2-again")
    restored.tell(t, 0.9)
    store.sync("cell", restored, "objective", {})
    trials = _stored(store).trials
    assert [tr.user_attrs["ray_trial_id"] for tr in trials] == ["r0", "r1", "r2-again"]
    assert [tr.number for tr in trials] == [0, 1, 2]
    assert trials[1].user_attrs["mlflow_run_id"] == "m1" and trials[1].state.name == "COMPLETE"


def test_the_store_pickles_without_its_engine_and_follows_a_moved_run_dir(tmp_path):
    store = StudyStore(tmp_path / "a")
    store.sync("cell", _source(1), "objective", {})
    clone = pickle.loads(pickle.dumps(store))
    assert clone._storage is None and clone.url is None
    (tmp_path / "a").rename(tmp_path / "b")
    clone.run_dir = str(tmp_path / "b")  # what a relocated run directory's searcher is given
    assert clone.resolved_url == default_url(tmp_path / "b")
    assert len(load_studies(tmp_path / "b")["cell"].trials) == 1


@pytest.mark.parametrize("url, ok", [(None, True), ("sqlite:////abs/optuna.db", True), ("postgresql://u@h/db", True),
                                     ("sqlite:///rel.db", False), ("optuna.db", False)])
def test_storage_urls(url, ok):
    if ok:
        check_url(url)
    else:
        with pytest.raises(ConfigError, match="Optuna storage"):
            check_url(url)


def _smoke_searcher(run_dir):
    from pathlib import Path

    from benchmark.plan.matrix import build_plan
    from benchmark.plan.spec import load_spec
    from benchmark.sweep.searcher import MultiCellSearcher

    plan = build_plan(load_spec(Path(__file__).resolve().parents[3] / "experiments" / "smoke.yaml"))
    return MultiCellSearcher(plan.cells[:1], metric="objective", mode="min", n_startup_trials=2, run_dir=str(run_dir))


def test_a_failed_then_retried_trial_leaves_no_fail_in_the_stored_study(tmp_path):
    """Tune retries a failed trial under the same id (resume_errored, max_failures); the searcher turns its
    FAIL back into a running trial, and optuna.db must follow: no stale FAIL, the retry's value."""
    searcher = _smoke_searcher(tmp_path)
    cid = searcher.order[0]
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", {"objective": float("inf"), "status": "error"}, error=True)
    assert [(t.state.name, t.user_attrs.get("status")) for t in _stored(StudyStore(tmp_path), cid).trials] == \
        [("FAIL", "error")]
    searcher.on_trial_complete("t0", {"objective": 0.3, "status": "ok", "best_val_dice": 0.7})
    trials = _stored(StudyStore(tmp_path), cid).trials
    assert [(t.state.name, t.value, t.user_attrs.get("status"), t.user_attrs.get("ray_trial_id")) for t in trials] == \
        [("COMPLETE", 0.3, "ok", "t0")]


@pytest.mark.parametrize("how", ["snapshot", "tuner.pkl"])
def test_a_restored_searcher_writes_the_studies_where_the_run_is_now(tmp_path, how):
    """A copied run directory resumed at its new path: the studies go to the copy's optuna.db (the searcher
    keeps the run directory the restoring driver gave it), the original's is untouched. Restored from its
    own snapshot (`restore`) or, before the first snapshot, unpickled with the Tuner (`tuner.pkl`)."""
    import hashlib
    import shutil

    from benchmark.sweep.searcher import MultiCellSearcher

    a, b = tmp_path / "disk-a" / "run", tmp_path / "disk-b" / "run"
    searcher = _smoke_searcher(a)
    cid = searcher.order[0]
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", {"objective": 0.5, "status": "ok"})
    searcher.save(str(a / "state.pkl"))
    shutil.copytree(a, b)
    before = hashlib.sha256((a / "optuna.db").read_bytes()).hexdigest()

    if how == "snapshot":
        restored = MultiCellSearcher.__new__(MultiCellSearcher)
        restored.run_dir = str(b)  # as relocation.repoint_restored sets it before Tune restores the snapshot
        restored.restore(str(b / "state.pkl"))
    else:
        restored = pickle.loads(pickle.dumps(searcher))
        restored.run_dir = str(b)
    restored.suggest("t1")
    restored.on_trial_complete("t1", {"objective": 0.4, "status": "ok"})
    assert [t.user_attrs["ray_trial_id"] for t in load_studies(b)[cid].trials] == ["t0", "t1"]
    assert hashlib.sha256((a / "optuna.db").read_bytes()).hexdigest() == before
    assert [t.user_attrs["ray_trial_id"] for t in load_studies(a)[cid].trials] == ["t0"]


# ---- the one private Optuna call: reopening a FAIL trial -------------------------------------------------

def test_reopen_failed_turns_a_fail_back_into_a_running_trial_that_can_be_told_again():
    """A retried Tune trial is the same Optuna trial: its FAIL must become RUNNING so the retry is told as
    what it became. Optuna's public API refuses to update a finished trial (pinned here: if that ever
    changes, `reopen_failed` can drop its private `_set_trial`), so `reopen_failed` is the one place that
    writes the in-memory storage directly."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from benchmark.sweep.studies import reopen_failed

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(trial, state=TrialState.FAIL)
    storage, tid = study._storage, trial._trial_id
    with pytest.raises(UpdateFinishedTrialError):
        storage.set_trial_state_values(tid, TrialState.RUNNING)

    search = SimpleNamespace(_ot_trials={"t0": trial}, _ot_study=study, _completed_trials={"t0"})
    reopen_failed(search, "t0")
    reopened = storage.get_trial(tid)
    assert (reopened.state, reopened.values, reopened.datetime_complete) == (TrialState.RUNNING, None, None)
    assert "t0" not in search._completed_trials
    study.tell(trial, 0.25)
    assert [(t.state, t.value, t.params) for t in study.trials] == [(TrialState.COMPLETE, 0.25, trial.params)]

    # A trial that did not fail is left as it is.
    reopen_failed(search, "t0")
    assert storage.get_trial(tid).state == TrialState.COMPLETE
