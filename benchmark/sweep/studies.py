"""Each cell's Optuna study in Optuna's own storage, for `optuna.load_study`, optuna-dashboard and Optuna's plots.

    import optuna
    study = optuna.load_study(study_name="clipseg_maple_kvasir", storage="sqlite:///<run dir>/optuna.db")

One study per searched cell, named by its cell id, in an RDB storage: by default `<run dir>/optuna.db`
(`sqlite:///` + the run directory as it is when the driver opens it: a moved run directory keeps working),
or any SQLAlchemy URL (`search.storage` in the spec, `tunevlseg run --optuna-storage URL`).

Why the sampler works on a study held by the searcher and this storage follows it, rather than TPE running
on the RDB directly: the searcher's study is snapshotted together with Tune's experiment state, and a sweep
killed at any moment restores both from the same snapshot. The RDB is written at every step (a trial asked,
a trial told), so it can be ahead of that snapshot after a SIGKILL: trials asked after it, which Tune
re-runs under new ids. `StudyStore.sync` makes the stored study equal to the searcher's again (updating a
trial in place when it only finished, rebuilding the study when it holds trials the snapshot does not
know), so it always holds exactly the planned trials, none twice.

Per study: `metric_names` (the objective) and user attributes cell_id, vlsm, learner, dataset, variant,
spec, seed. Per trial, user attributes: `ray_trial_id` and `trial_index`, at the end `status`, `val_dice`
(the trial's best validation Dice), `test_dice`, and `mlflow_run_id` when MLflow mirrors the sweep
(`StudyLinks`).

Ray's OptunaSearch has no public accessor for its study or its per-trial Optuna trials; the few private
attributes the searcher needs are read here only (`optuna_trial`, `optuna_study`, ...) and checked
against the Ray versions they were verified with.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Any

from ray.tune import Callback

from benchmark.results.run_dir import OPTUNA_DB
from trainables.config import ConfigError

logger = logging.getLogger("tunevlseg.studies")

RAY_TRIAL_ID = "ray_trial_id"

# ---- the one place that reads OptunaSearch's private attributes -----------------------------------------

_VERIFIED_RAY = ("2.60",)  # OptunaSearch internals checked with these Ray versions
_PRIVATE = ("_ot_study", "_ot_trials", "_completed_trials")
_VERIFIED_OPTUNA = ("5.",)


_warned = False


def check_optuna_search(search) -> None:
    """Fail at start-up, not mid-sweep, when a Ray upgrade moved OptunaSearch's internals."""
    global _warned
    import ray

    missing = [a for a in _PRIVATE if not hasattr(search, a)]
    if missing:
        raise RuntimeError(f"ray {ray.__version__}: OptunaSearch has no {', '.join(missing)}; benchmark/sweep/"
                           f"studies.py was verified with ray {', '.join(_VERIFIED_RAY)} only")
    import optuna

    if not hasattr(optuna.trial.FrozenTrial, "_trial_id") and "_trial_id" not in vars(
            optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING)):
        raise RuntimeError(f"optuna {optuna.__version__}: FrozenTrial has no _trial_id; benchmark/sweep/studies.py "
                           f"was verified with optuna {', '.join(_VERIFIED_OPTUNA)}x")
    if not ray.__version__.startswith(_VERIFIED_RAY) and not _warned:
        _warned = True
        warnings.warn(f"ray {ray.__version__}: benchmark/sweep/studies.py reads OptunaSearch internals verified "
                      f"with ray {', '.join(_VERIFIED_RAY)}", RuntimeWarning, stacklevel=2)


def optuna_study(search):
    return search._ot_study


def optuna_trial(search, trial_id: str):
    """The live `optuna.Trial` OptunaSearch asked for a Ray trial (None if it did not)."""
    return search._ot_trials.get(trial_id)


def is_told(search, trial_id: str) -> bool:
    return trial_id in search._completed_trials


def mark_told(search, trial_id: str) -> None:
    search._completed_trials.add(trial_id)


def reopen_failed(search, trial_id: str) -> None:
    """Make a FAIL Optuna trial RUNNING again, so its retry is told as what it became (COMPLETE, ...).

    Optuna never updates a finished trial through its API (`set_trial_state_values` raises
    UpdateFinishedTrialError: tests/benchmark/sweep/test_studies.py pins it); a retried Tune trial keeps its id and its
    parameters, so it is the same Optuna trial. Done on the searcher's in-memory study, the one place that
    writes Optuna's storage privately (`InMemoryStorage._set_trial`; a storage without it keeps the FAIL; the
    Parquet row is right either way); the RDB copy follows at the next `StudyStore.sync`, which rebuilds a
    study whose stored trial was told differently."""
    import optuna

    ot_trial = search._ot_trials.get(trial_id)
    storage = search._ot_study._storage
    if ot_trial is None or not hasattr(storage, "_set_trial"):
        return
    with storage._lock:  # get and set as one step (a re-entrant lock: `get_trial` takes it too)
        frozen = copy.copy(storage.get_trial(ot_trial._trial_id))
        if frozen.state != optuna.trial.TrialState.FAIL:
            return
        frozen.state, frozen.values, frozen.datetime_complete = optuna.trial.TrialState.RUNNING, None, None
        storage._set_trial(ot_trial._trial_id, frozen)
    search._completed_trials.discard(trial_id)


def stored_id(frozen) -> int:
    """The storage's id of a FrozenTrial (Optuna's storage API takes it; the trial shows only its number)."""
    return frozen._trial_id


# ---- the storage ------------------------------------------------------------------------------------------

def default_url(run_dir: str | Path) -> str:
    return f"sqlite:///{(Path(run_dir).expanduser().resolve() / OPTUNA_DB)}"  # four slashes: absolute path


def check_url(url: str | None) -> None:
    """A SQLAlchemy URL the driver can open the same way wherever it is started."""
    if url is None:
        return
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"Optuna storage {url!r}: expected a SQLAlchemy URL such as sqlite:////abs/optuna.db or "
                          "postgresql://user@host/db")
    if url.startswith("sqlite:///") and not url[len("sqlite:///"):].startswith("/"):
        raise ConfigError(f"Optuna storage {url!r} is relative to the working directory; use "
                          "sqlite:////absolute/path/optuna.db (or leave it unset: <run dir>/optuna.db)")


class StudyStore:
    """The RDB storage of a sweep's studies. Pickled with the searcher as its URL rule only (`url`, None =
    the run directory's optuna.db, derived when opened), never as an open engine or an absolute default."""

    def __init__(self, run_dir: str | Path, url: str | None = None):
        check_url(url)
        self.run_dir = str(run_dir)
        self.url = url
        self._storage = None

    def __getstate__(self):
        return {"run_dir": self.run_dir, "url": self.url}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._storage = None

    @property
    def resolved_url(self) -> str:
        return self.url or default_url(self.run_dir)

    def storage(self):
        if self._storage is None:
            import optuna

            if self.url is None:
                Path(self.run_dir).mkdir(parents=True, exist_ok=True)
            self._storage = optuna.storages.RDBStorage(self.resolved_url)
        return self._storage

    def _load(self, name: str):
        import optuna

        try:
            return optuna.load_study(study_name=name, storage=self.storage())
        except KeyError:
            return None

    def sync(self, name: str, source, metric: str, attrs: dict[str, Any]) -> None:
        """Make the stored study `name` hold exactly the trials of `source` (the searcher's study)."""
        want = source.get_trials(deepcopy=False)
        study = self._load(name)
        if study is not None and self._update_in_place(study, want):
            return
        kept: dict[str, dict] = {}
        if study is not None:  # trials the snapshot does not know (or that changed): start the study again
            kept = {t.user_attrs.get(RAY_TRIAL_ID): dict(t.user_attrs) for t in study.get_trials(deepcopy=False)}
            import optuna

            optuna.delete_study(study_name=name, storage=self.storage())
        study = self._create(name, source, metric, attrs)
        for t in want:
            extra = kept.get(t.user_attrs.get(RAY_TRIAL_ID), {})
            t2 = copy.deepcopy(t)
            t2.user_attrs = {**extra, **t.user_attrs}
            study.add_trial(t2)

    def _create(self, name: str, source, metric: str, attrs: dict[str, Any]):
        import optuna

        study = optuna.create_study(study_name=name, storage=self.storage(), directions=source.directions)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([metric])
        for k, v in attrs.items():
            study.set_user_attr(k, v)
        return study

    def _update_in_place(self, study, want) -> bool:
        """Append new trials and finish those that finished; False when the stored study has a trial the
        source does not (then it is rebuilt)."""
        have = study.get_trials(deepcopy=False)
        if len(have) > len(want):
            return False
        storage = self.storage()
        for h, w in zip(have, want):
            if h.number != w.number or h.user_attrs.get(RAY_TRIAL_ID) != w.user_attrs.get(RAY_TRIAL_ID) \
                    or h.params != w.params:
                return False
            if h.state == w.state and h.values == w.values:
                stale = [k for k, v in w.user_attrs.items() if h.user_attrs.get(k) != v]
                if stale and h.state.is_finished():  # a finished trial cannot be updated: rebuild
                    return False
                for k in stale:
                    storage.set_trial_user_attr(stored_id(h), k, w.user_attrs[k])
                continue
            if h.state.is_finished():  # told differently than the source: the source wins
                return False
            for step, value in w.intermediate_values.items():
                if step not in h.intermediate_values:
                    storage.set_trial_intermediate_value(stored_id(h), step, value)
            for k, v in w.user_attrs.items():
                storage.set_trial_user_attr(stored_id(h), k, v)
            storage.set_trial_state_values(stored_id(h), w.state, w.values)
        for w in want[len(have):]:
            study.add_trial(copy.deepcopy(w))
        return True

    def link(self, name: str, ray_trial_id: str, **attrs: Any) -> bool:
        """Set user attributes on the stored trial of `ray_trial_id` (e.g. its MLflow run id) while it runs
        (Optuna's storage refuses changes to a finished trial); False when there is no such running trial."""
        study = self._load(name)
        if study is None:
            return False
        for t in study.get_trials(deepcopy=False):
            if t.user_attrs.get(RAY_TRIAL_ID) == ray_trial_id:
                if t.state.is_finished():
                    return all(t.user_attrs.get(k) == v for k, v in attrs.items())
                for k, v in attrs.items():
                    if t.user_attrs.get(k) != v:
                        self.storage().set_trial_user_attr(stored_id(t), k, v)
                return True
        return False

    def load_all(self) -> dict[str, Any]:
        """{study name: optuna.Study} of every study in the storage."""
        import optuna

        return {s.study_name: optuna.load_study(study_name=s.study_name, storage=self.storage())
                for s in optuna.get_all_study_summaries(self.storage(), include_best_trial=False)}


def load_studies(run_dir: str | Path, url: str | None = None) -> dict[str, Any]:
    """Every cell's study of a run, from its Optuna storage: {cell_id: optuna.Study}."""
    if url is None and not (Path(run_dir) / OPTUNA_DB).is_file():
        raise FileNotFoundError(f"{Path(run_dir) / OPTUNA_DB} not found: not a run directory with Optuna studies")
    return StudyStore(run_dir, url).load_all()


class StudyLinks(Callback):
    """Puts each trial's MLflow run id on its stored Optuna trial (driver side, after the MLflow callback,
    when the trial starts: the stored trial is RUNNING then, and keeps the link when it is told)."""

    def __init__(self, store: StudyStore, mirror):
        self.store = store
        self.mirror = mirror

    def _link(self, trial) -> None:
        if getattr(self.mirror, "disabled", None):  # MLflow turned itself off: nothing to link, no timeouts
            return
        cid = trial.config.get("cell_id")
        if trial.config.get("reseed"):  # a rerun over seeds has no Optuna trial (benchmark/sweep/reseed.py)
            return
        try:
            run_id = self.mirror.find_trial_run(trial.trial_id)
            if cid and run_id:
                self.store.link(cid, trial.trial_id, mlflow_run_id=run_id)
        except Exception as e:  # noqa: BLE001 - a link is a convenience, never a reason to stop a sweep
            logger.warning("Optuna study %s: cannot link trial %s to MLflow: %s", cid, trial.trial_id, e)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._link(trial)



def study_attrs(cell) -> dict[str, Any]:
    from benchmark.mlflow_mirror.tags import objective_text  # what `objective` is, as MLflow says it too

    return {"cell_id": cell.id, **cell.keys, "spec": cell.spec, "seed": cell.seed,
            "objective": objective_text(cell.config)}


def trial_outcome(result: dict | None) -> dict[str, Any]:
    """User attributes from a trial's final result: status and the Dice scores a user compares."""
    out: dict[str, Any] = {}
    for key, attr in (("status", "status"), ("best_val_dice", "val_dice"), ("test_dice", "test_dice")):
        v = (result or {}).get(key)
        if isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool) and v == v):
            out[attr] = v
    return out
