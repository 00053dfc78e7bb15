"""`MultiCellSearcher`: one Ray Tune searcher that keeps one Optuna study per cell.

Why one searcher for all cells (orchestration.md §4, measured on Ray 2.60): several `Tuner.fit` calls in
threads crash on Tune's global registry, and concurrent Tuners in Ray tasks silently swap parameters
between cells. One Tuner over the whole matrix with this searcher keeps every GPU slot busy across
cells, restores as one experiment, and still gives each cell its own TPE study of exactly its planned
number of trials (TPE never pools trials across datasets or learners).

Scheduling: a free slot goes to the cell with the fewest trials in flight (ties: plan order). With many
cells that means each study sees its trials almost one after another, as in the original's sequential
sweeps, which is what TPE learns best from.

Early stopping (`execution.scheduler: asha`, benchmark/sweep/scheduler.py): a trial the scheduler stops ends
without its final report, and its last result is marked `status: pruned` by the coordinator. Ray's own
OptunaSearch would tell Optuna COMPLETE with that truncated value (orchestration.md section 2), so TPE would
treat a loss after 2 epochs like a finished trial's; here such a trial is told PRUNED, with its last
intermediate value, which TPE ranks below every completed trial.

The studies also live in Optuna's own storage (by default `<run dir>/optuna.db`, one study per cell named by
its cell id), written at every ask and tell and reconciled with this searcher's state on restore
(benchmark/sweep/studies.py).

The searcher is pickled into the experiment (`tuner.pkl`, `searcher-state-*.pkl`), so it lives in this
importable module, never in `__main__`.
"""

from __future__ import annotations

import math
import pickle
from functools import partial
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from benchmark.plan import search_space
from benchmark.plan.spec import Selection
from benchmark.sweep import studies as S
from benchmark.sweep.reseed import Reseeds
from trainables.protocol import STATUS_ERROR, STATUS_PRUNED


class MultiCellSearcher(Searcher):
    """`cells`: a sequence of `benchmark.plan.matrix.Cell`.

    Every suggested config is `{"cell_id", "trial_index", "hp": {name: value}, "trial": nested trial
    config, "resources": {"cpu", "gpu"}}`. The trainable reads `config["trial"]`; `hp` is the flat view
    of the searched values for records and MLflow.

    The searcher itself declares no metric: trials report the objective only in their final result, and
    Tune would otherwise demand it in every per-epoch report. Each cell's OptunaSearch gets `metric` and
    `mode` itself (with a define-by-run space Tune's own metric/mode would not reach it).
    """

    def __init__(self, cells, metric: str = "objective", mode: str = "min", sampler: str = "tpe",
                 n_startup_trials: int = 10, multivariate: bool = True, constant_liar: bool = True,
                 max_concurrent_per_cell: int | None = None, prune_metric: str = "val_loss",
                 run_dir: str | None = None, optuna_storage: str | None = None,
                 select: Selection | None = None):
        super().__init__(metric=None, mode=None)
        S.check_url(optuna_storage)
        self.optuna_storage = optuna_storage  # None: <run dir>/optuna.db, derived from run_dir when opened
        self._store = None
        self.study_attrs = {c.id: S.study_attrs(c) for c in cells}
        self.run_dir = run_dir  # whose Parquet rows settle trials a restored snapshot still has open
        self.prune_metric = prune_metric  # told with a PRUNED trial that reported no per-epoch objective
        self.objective_metric = metric
        self.objective_mode = mode
        self.max_concurrent_per_cell = max_concurrent_per_cell
        self.order = [c.id for c in cells]
        self.planned = {c.id: c.trials for c in cells}
        self.base = {c.id: {"config": c.config, "params": c.params, "resources": dict(c.resources)} for c in cells}
        settings = search_space.TPESettings(n_startup_trials=n_startup_trials, multivariate=multivariate,
                                            constant_liar=constant_liar)
        self.studies: dict[str, OptunaSearch | None] = {}
        for c in cells:
            if not c.params:  # nothing to search (E2E): the single trial runs the fixed settings
                self.studies[c.id] = None
                continue
            if sampler == "random":
                import optuna

                smp = optuna.samplers.RandomSampler(seed=c.seed)
            else:
                smp = search_space.make_sampler(c.seed, settings)
            self.studies[c.id] = OptunaSearch(space=partial(search_space.define_by_run, params=c.params),
                                              metric=metric, mode=mode, sampler=smp, study_name=c.id)
            S.check_optuna_search(self.studies[c.id])
        self.issued = {cid: 0 for cid in self.order}
        self.live: dict[str, set[str]] = {cid: set() for cid in self.order}
        self.owner: dict[str, str] = {}
        self.finished: dict[str, set[str]] = {cid: set() for cid in self.order}
        # spec select.reseed: the selected configuration of each cell again with further seeds (reseed.py)
        self.reseeds = Reseeds(cells, select or Selection()) if any(c.reseeds for c in cells) else None

    # Tune calls this with the Tuner's metric/mode/param_space; the cells' studies already have theirs.
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict | None:
        reseeds = getattr(self, "reseeds", None)
        if reseeds is not None:
            extra = reseeds.next_trial(trial_id, self.base, search_space.apply_values)
            if extra is not None:
                self.live[extra["cell_id"]].add(trial_id)
                self.owner[trial_id] = extra["cell_id"]
                return extra
        open_cells = [cid for cid in self.order if self.issued[cid] < self.planned[cid]]
        if not open_cells:
            if reseeds is not None and any(reseeds.pending(cid) for cid in self.order):
                return None  # reseeds wait for their cell's last search trials
            return Searcher.FINISHED
        if self.max_concurrent_per_cell:
            open_cells = [cid for cid in open_cells if len(self.live[cid]) < self.max_concurrent_per_cell]
            if not open_cells:
                return None  # wait for a trial to finish
        cid = min(open_cells, key=lambda c: (len(self.live[c]), self.order.index(c)))
        study = self.studies[cid]
        hp = study.suggest(trial_id) if study is not None else {}
        index = self.issued[cid]
        if study is not None:
            ot_trial = S.optuna_trial(study, trial_id)
            ot_trial.set_user_attr(S.RAY_TRIAL_ID, trial_id)
            ot_trial.set_user_attr("trial_index", index)
        self.issued[cid] += 1
        self.live[cid].add(trial_id)
        self.owner[trial_id] = cid
        if getattr(self, "reseeds", None) is not None:
            self.reseeds.note_suggested(trial_id, index, hp)
        base = self.base[cid]
        trial = search_space.apply_values(_deepcopy(base["config"]), base["params"], hp)
        self._sync(cid)
        return {"cell_id": cid, "trial_index": index, "hp": dict(hp), "trial": trial,
                "resources": dict(base["resources"])}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        cid = self.owner.get(trial_id)
        study = self.studies.get(cid) if cid else None
        if getattr(self, "reseeds", None) is not None and trial_id in self.reseeds.trials:
            return  # a reseed trial is never told to Optuna
        if study is not None and _is_number(result.get(self.objective_metric)):
            study.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        cid = self.owner.get(trial_id)
        if cid is None:
            return
        self.live[cid].discard(trial_id)
        self.finished[cid].add(trial_id)
        if getattr(self, "reseeds", None) is not None and self.reseeds.on_complete(cid, trial_id, result, error):
            return  # a reseed trial: never told to Optuna
        study = self.studies[cid]
        if study is not None and S.is_told(study, trial_id) and not error:
            # failed earlier, then retried (resume_errored, max_failures) and finished: the same Optuna trial,
            # told again as what it became; the next sync replaces the stored FAIL in optuna.db too
            S.reopen_failed(study, trial_id)
        if study is None or S.is_told(study, trial_id):
            return
        ot_trial = S.optuna_trial(study, trial_id)
        for k, v in S.trial_outcome(result).items():
            ot_trial.set_user_attr(k, v)
        if error and "status" not in (result or {}):
            ot_trial.set_user_attr("status", STATUS_ERROR)
        try:
            self._tell(study, trial_id, result, error)
        finally:
            self._sync(cid)

    def _tell(self, study: OptunaSearch, trial_id: str, result: dict | None, error: bool) -> None:
        if not error and (result or {}).get("status") == STATUS_PRUNED:
            self._tell_pruned(study, trial_id, result)
            return
        value = (result or {}).get(self.objective_metric)
        failed = error or (result or {}).get("status") == STATUS_ERROR or not _is_number(value) or math.isnan(value)
        # An errored trial (even one that reported objective=inf before raising) is FAIL, never a value
        # TPE would learn from; a diverged trial keeps its +inf objective: TPE learns that region is bad.
        study.on_trial_complete(trial_id, result=None if failed else result, error=failed)

    def _tell_pruned(self, study: OptunaSearch, trial_id: str, result: dict) -> None:
        """PRUNED with the value at the step it stopped (the verified PruningOptunaSearch idea, per cell).

        Tune does not forward the result that made the scheduler stop a trial to the searcher, so it is
        reported here: the trial's objective at that epoch, else the scheduler's metric (the fake trainable
        reports no per-epoch objective). Optuna stores the last intermediate value as the trial's value."""
        import optuna

        ot_trial = S.optuna_trial(study, trial_id)
        ot_study = S.optuna_study(study)
        step = result.get("training_iteration")
        metric = getattr(self, "prune_metric", "val_loss")
        value = next((result[k] for k in (self.objective_metric, metric) if _is_number(result.get(k))), None)
        if value is not None and _is_number(step) and not math.isnan(value):
            frozen = ot_study.get_trials(deepcopy=False)[ot_trial.number]
            if int(step) not in frozen.intermediate_values:
                ot_trial.report(float(value), int(step))
        ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        S.mark_told(study, trial_id)

    # ---- inspection (tests, progress) -------------------------------------------------------------------

    def study(self, cid: str):
        s = self.studies[cid]
        return None if s is None else S.optuna_study(s)

    # ---- Optuna's storage: the studies for load_study / optuna-dashboard --------------------------------

    @property
    def store(self) -> S.StudyStore | None:
        store = getattr(self, "_store", None)
        # Opened for the run directory this driver works in: a searcher unpickled from tuner.pkl (before any
        # snapshot of its own) still holds the store of the path the run was started at.
        url = getattr(self, "optuna_storage", None)
        if getattr(self, "run_dir", None) and (store is None or store.run_dir != str(self.run_dir) or store.url != url):
            self._store = S.StudyStore(self.run_dir, getattr(self, "optuna_storage", None))
        return getattr(self, "_store", None)

    def _sync(self, cid: str) -> None:
        """Write the cell's study to the storage; a storage that fails never stops the sweep (the next
        sync of the cell, at the latest the restore, brings it back in line)."""
        study = self.studies.get(cid)
        if study is None or not getattr(self, "_write_storage", True) or self.store is None:
            return
        try:
            self.store.sync(cid, S.optuna_study(study), self.objective_metric, self.study_attrs.get(cid, {}))
        except Exception as e:  # noqa: BLE001
            import logging

            logging.getLogger("tunevlseg.studies").warning("Optuna storage: study %s not written: %s: %s",
                                                           cid, type(e).__name__, e)

    # ---- persistence: Tune snapshots the searcher with the experiment --------------------------------

    def save(self, checkpoint_path: str) -> None:
        state = {k: v for k, v in self.__dict__.items() if k != "_store"}  # an open engine is not state
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        here = self.__dict__.get("run_dir")  # set by the driver that restores: the run may have moved
        rule = self.__dict__.get("reseed_rule")  # the selection rule of the spec this driver runs
        storage = self.__dict__.get("optuna_storage") if self.__dict__.get("driver_storage") else False
        from benchmark.sweep.snapshots import install_module_aliases

        install_module_aliases()  # a snapshot written before the module move names the old modules
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self._store = None  # opened again from the run_dir below: the one this driver found the run in
        if here:
            self.run_dir = here
        if storage is not False:  # the driver's Optuna storage wins over the one of the first start
            self.optuna_storage, self.driver_storage = storage, True
        if rule is not None:
            self.reseed_rule = rule
            if getattr(self, "reseeds", None) is not None and getattr(self, "run_dir", None):
                from benchmark.results.run_dir import RunDir

                self.reseeds.adopt(rule, RunDir(self.run_dir).all_rows())
        self._settle_from_records()
        for cid in self.order:  # the storage may be ahead of this snapshot: trials asked after it
            self._sync(cid)

    def _settle_from_records(self) -> None:
        """Tell the studies about trials that finished after this snapshot was taken.

        Tune writes the experiment state and then the searcher's snapshot. A driver killed between the two
        restores trials that Tune knows are finished (it never reruns or reports them again) into a
        searcher that still has them open: their Optuna trials would stay RUNNING for good. The Parquet
        rows, written when each trial finishes, say how they ended."""
        open_trials = {tid: cid for tid, cid in self.owner.items() if tid not in self.finished.get(cid, ())}
        if not open_trials or not getattr(self, "run_dir", None):
            return
        from benchmark.results.run_dir import RunDir

        for row in (r for r in RunDir(self.run_dir).all_rows() if r["trial_id"] in open_trials):
            keep = (self.objective_metric, "status", "best_val_dice", "test_dice",
                    *(self.reseeds.metrics() if getattr(self, "reseeds", None) else ()))
            result = {k: v for k, v in row.items() if k in keep}
            self.on_trial_complete(row["trial_id"], result, error=row["status"] == STATUS_ERROR)




def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _deepcopy(d: dict) -> dict:
    import copy

    return copy.deepcopy(d)


def load_studies(experiment_dir: str) -> dict[str, Any]:
    """The Optuna study of every searched cell, from an experiment's latest searcher snapshot
    (`<run dir>/tune`): `{cell_id: optuna.Study}`. For tests; users load the stored studies
    (`optuna.load_study`, `benchmark.sweep.studies.load_studies`)."""
    from pathlib import Path

    # By the session timestamp in the name: a resumed run re-syncs the older sessions' snapshots too, so
    # their modification times tie with the newest one's.
    files = sorted(Path(experiment_dir).glob("searcher-state-*.pkl"), key=lambda p: p.name)
    if not files:
        raise FileNotFoundError(f"no searcher snapshot in {experiment_dir}")
    searcher = MultiCellSearcher.__new__(MultiCellSearcher)
    searcher._write_storage = False  # inspection: leave optuna.db alone
    searcher.restore(str(files[-1]))
    return {cid: S.optuna_study(s) for cid, s in searcher.studies.items() if s is not None}
