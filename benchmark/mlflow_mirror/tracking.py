"""The MLflow mirror of a sweep: one experiment per spec; in it one sweep run, parent of one run per cell,
parent of one run per trial.

Parquet is the source of truth; MLflow is a view for people (`make mlflow-ui`). Everything here runs in
the driver (a single writer), through a Tune callback:

- The tracking store is created by the driver before any trial starts: a fresh sqlite DB opened by several
  processes at once hits migration races (orchestration.md §5). The default URI is the absolute
  `sqlite:///<run dir>/mlflow.db` (a relative one would resolve in each trial's temporary CWD) and the
  artifact root is `<run dir>/mlartifacts`; on a cluster pass a server URI.
- Ray's stock `MLflowLoggerCallback` opens a second run for every resumed trial after `Tuner.restore` and
  leaves the first RUNNING forever. Here a trial's run is found again by its `trial_id` tag and reused;
  runs of trials the restored experiment no longer knows (started after its last snapshot, then re-run
  under a new id) are deleted, and `finalize` leaves nothing RUNNING when the driver returns.
- A broken tracking server never stops a sweep: HTTP calls get short timeouts and no retries
  (`_short_http_timeouts`), and the first failure turns the mirror off for the rest of the sweep with one
  warning line; `tunevlseg mlflow sync RUN` (benchmark/mlflow_mirror/backfill.py) fills MLflow from Parquet later.

Tags: `tunevlseg.sweep` (one id per started sweep), `tunevlseg.role` (`sweep`, `cell` or `trial`), `cell_id`,
`vlsm`, `learner`, `dataset`, `variant`, `trial_id`, `trial_index`, `status`, `objective` (what it is);
children carry `mlflow.parentRunId` (cell -> sweep run, trial -> cell). As MLflow's own clients do, every
run also carries the system tags `mlflow.source.name`/`.type`, `mlflow.user` and, from a checkout,
`mlflow.source.git.commit`; the experiment is tagged as model training (`mlflow.experimentKind`) with the
spec's description as its note. MLflow 3.17's UI ignores that tag: links to it carry
`workflowType=machine_learning` (`ui_link`), or it opens its GenAI page.

What a run holds: the sweep run has the sweep's counts (`trials_planned`, `trials_done`, `trials_failed`,
`cells_done`) and the mean selected scores per variant (`mean_selected_test_dice.default`, ...) as metrics,
and, once `tunevlseg tables` ran, report.md (its note), the tables, figures and embeddings; a cell's run has
the cell's fixed settings and search space as params and the selected trial's scores as `selected_*`
metrics; a trial's run has its config as params, one value per metric and epoch (step = epoch counted from
1, Tune's `training_iteration`, the step Optuna's intermediate values use), its tuned-prompt artifact and
`preview.png` (a few test images with ground truth and prediction).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from typing import Any

from ray.tune import Callback

from benchmark.mlflow_mirror.tags import EXPERIMENT_KIND, cell_params, flatten, objective_text, system_tags, ui_link  # noqa: F401
from benchmark.sweep.failures import trial_error_text
from trainables.protocol import CHECKPOINT_ARTIFACT, PREVIEW_FILE, STATUS_ERROR, STATUS_OK

logger = logging.getLogger("tunevlseg.tracking")

# Tune's bookkeeping keys: not metrics worth plotting.
_TUNE_KEYS = {"timestamp", "time_this_iter_s", "pid", "training_iteration", "time_since_restore",
              "iterations_since_restore", "done", "date", "hostname", "node_ip", "trial_id", "experiment_tag",
              "checkpoint_dir_name", "should_checkpoint", "config", "epoch"}
_MAX_TAG = 5000
# A trial's final result repeats these of its last epoch report, at the same step.
_REPEATED_AT_END = ("objective", "val_loss")


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _quiet(method):
    """MLflow is a mirror: on the first failure it turns itself off (one warning) and the sweep carries on."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        mirror = getattr(self, "mirror", self)
        if mirror.disabled:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001
            mirror.disable(method.__name__, e)
            return None

    return wrapper


# MLflow's HTTP defaults (120 s timeout, 7 retries with backoff) block the driver's callbacks ~4 min per
# call when the server is down; a mirror should cost seconds. Set before the first request (MLflow caches
# its HTTP session); a user's own values win.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def _short_http_timeouts() -> None:
    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)


class MLflowMirror:
    """Driver-side access to one sweep's runs (used by the callback and by the coordinator)."""

    def __init__(self, uri: str, experiment: str, sweep_id: str, cells: dict[str, dict[str, str]],
                 artifact_location: str | None = None, description: str = "",
                 params: dict[str, dict[str, str]] | None = None, tags: dict[str, str] | None = None):
        self.uri = uri
        self.experiment = experiment
        self.sweep_id = sweep_id
        self.cells = cells  # cell_id -> {vlsm, learner, dataset, variant}
        self.artifact_location = artifact_location
        self.description = description
        self.params = params or {}  # cell_id -> the parent run's params
        self.tags = tags or {}  # system tags of every run
        self._client = None
        self._exp_id: str | None = None
        self._parents: dict[str, str] = {}
        self._sweep_run: str | None = None
        self.disabled: str | None = None  # why the mirror turned itself off, None while it works
        self.sync_hint = "tunevlseg mlflow sync <run dir>"

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_client=None, _exp_id=None, _parents={}, _sweep_run=None, disabled=None)
        state.pop("_logged", None)
        return state

    def _system(self) -> dict[str, str]:
        return dict(getattr(self, "tags", None) or {})

    def disable(self, what: str, error: BaseException) -> None:
        """Off for the rest of this sweep, with one warning line: a dead server must not cost minutes per call."""
        first = (str(error).strip().splitlines() or [""])[0][:200]
        self.disabled = f"{what}: {type(error).__name__}: {first}"
        logger.warning("MLflow mirror off for the rest of this sweep (%s failed at %s: %s: %s); every trial is still "
                       "recorded in Parquet; when the server is back run: %s", self.uri, what, type(error).__name__,
                       first, self.sync_hint)

    @_quiet
    def connect(self) -> str | None:
        """The experiment id, creating the store in the driver before any trial; None (mirror off) on failure."""
        return self.ensure_experiment()

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            _short_http_timeouts()

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def ensure_experiment(self) -> str:
        if self._exp_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                self._exp_id = self.client.create_experiment(self.experiment, artifact_location=self.artifact_location,
                                                             tags={"tunevlseg.spec": self.experiment, **self._exp_tags()})
            else:
                self._exp_id = exp.experiment_id
                for k, v in self._exp_tags().items():
                    if exp.tags.get(k) != v:
                        self.client.set_experiment_tag(self._exp_id, k, v)
        return self._exp_id

    def _exp_tags(self) -> dict[str, str]:
        tags = {"mlflow.experimentKind": EXPERIMENT_KIND}
        if getattr(self, "description", ""):
            tags["mlflow.note.content"] = self.description
        return tags

    def _search(self, filter_string: str, **kw) -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.ensure_experiment()], filter_string, max_results=1000,
                                           page_token=token, **kw)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _sweep_filter(self, role: str) -> str:
        return f"tags.`tunevlseg.sweep` = '{self.sweep_id}' and tags.`tunevlseg.role` = '{role}'"

    def ui_link(self, base: str | None = None) -> str:
        """Where the UI lists this experiment's runs, in its model-training view."""
        if base is None and self.uri.startswith(("http://", "https://")):
            base = self.uri  # a tracking server serves its UI at the same address
        return ui_link(self._exp_id, *([base] if base else []))

    def sweep_run(self) -> str:
        """The sweep-level run (role `sweep`): parent of the cell runs; `tunevlseg tables` adds its outputs."""
        if getattr(self, "_sweep_run", None) is None:
            runs = self._search(self._sweep_filter("sweep"))
            if runs:
                self._sweep_run = runs[0].info.run_id
            else:
                tags = {**self._system(), "tunevlseg.sweep": self.sweep_id, "tunevlseg.role": "sweep"}
                if getattr(self, "description", ""):
                    tags["mlflow.note.content"] = self.description
                self._sweep_run = self.client.create_run(self.ensure_experiment(), run_name=f"{self.experiment} (sweep)",
                                                         tags=tags).info.run_id
        return self._sweep_run

    def parent_run(self, cid: str) -> str:
        if not self._parents:
            sweep = self.sweep_run()
            for run in self._search(self._sweep_filter("cell")):
                self._parents[run.data.tags.get("cell_id")] = run.info.run_id
                if run.data.tags.get("mlflow.parentRunId") != sweep:  # a cell run made before there was one
                    self.client.set_tag(run.info.run_id, "mlflow.parentRunId", sweep)
        if cid not in self._parents:
            tags = {**self._system(), "tunevlseg.sweep": self.sweep_id, "tunevlseg.role": "cell", "cell_id": cid,
                    **self.cells[cid], "mlflow.parentRunId": self.sweep_run()}
            self._parents[cid] = self.client.create_run(self.ensure_experiment(), run_name=cid, tags=tags).info.run_id
            params = (getattr(self, "params", None) or {}).get(cid)
            if params:
                from mlflow.entities import Param

                self.client.log_batch(self._parents[cid], params=[Param(k, v[:6000]) for k, v in params.items()])
        return self._parents[cid]

    def trial_runs(self) -> list:
        return self._search(self._sweep_filter("trial"))

    def find_trial_run(self, trial_id: str) -> str | None:
        runs = self._search(f"{self._sweep_filter('trial')} and tags.trial_id = '{trial_id}'")
        return runs[0].info.run_id if runs else None

    def start_trial(self, trial_id: str, trial_name: str, config: dict[str, Any]) -> str:
        """The trial's run: found again by its id after a restore (set RUNNING again), else created."""
        run_id = self.find_trial_run(trial_id)
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            for key in _REPEATED_AT_END:  # what the first life of this trial logged (one value per step)
                self._seen(run_id).update((key, m.step) for m in self.client.get_metric_history(run_id, key))
            self._clear_failure(run_id)
            return run_id
        from mlflow.entities import Param

        cid = config["cell_id"]
        tags = {**self._system(), "tunevlseg.sweep": self.sweep_id, "tunevlseg.role": "trial", "cell_id": cid,
                **self.cells[cid],
                "trial_id": trial_id, "trial_index": str(config.get("trial_index")), "trial_name": trial_name,
                "objective": objective_text(config.get("trial")), "mlflow.parentRunId": self.parent_run(cid)}
        if config.get("reseed"):  # a rerun of the cell's selected configuration with a further seed
            tags.update(reseed=str(config["reseed"]["k"]), reseed_of=str(config["reseed"]["of"]))
        run_id = self.client.create_run(self.ensure_experiment(), run_name=f"{cid}#{config.get('trial_index')}",
                                        tags=tags).info.run_id
        params = {"trial_index": config.get("trial_index"), **flatten(config.get("trial", {}))}
        params.update({f"hp.{k}": v for k, v in (config.get("hp") or {}).items()})
        self.client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        return run_id

    def _clear_failure(self, run_id: str) -> None:
        """A retried trial starts clean: the failed attempt's `error` tag and error.txt would outlive it."""
        run = self.client.get_run(run_id)
        if "error" in run.data.tags:
            self.client.delete_tag(run_id, "error")
        if any(f.path == "error.txt" for f in self.client.list_artifacts(run_id)):
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            try:
                get_artifact_repository(run.info.artifact_uri).delete_artifacts("error.txt")
            except Exception as e:  # noqa: BLE001 - a store without deletes: the text says it is stale
                logger.debug("cannot delete error.txt of %s: %s", run_id, e)
                self.client.log_text(run_id, "(an earlier attempt failed; this trial was retried)", "error.txt")

    def log_result(self, run_id: str, result: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        # Tune's training_iteration (1, 2, ...: one per epoch report): the step Optuna's intermediate values
        # use too, so both count the same epochs.
        step = int(result.get("training_iteration") or (int(result.get("epoch", -1) or 0) + 1))
        ts = int(float(result.get("timestamp", 0) or 0) * 1000)
        seen = self._seen(run_id)
        metrics = [Metric(k, float(v), ts, step) for k, v in result.items()
                   if k not in _TUNE_KEYS and _numeric(v) and not (isinstance(v, float) and math.isnan(v))
                   and (k, step) not in seen]  # the final result repeats the last epoch's objective/val_loss
        seen.update((m.key, step) for m in metrics)
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def _seen(self, run_id: str) -> set:
        if not hasattr(self, "_logged"):
            self._logged: dict[str, set] = {}
        return self._logged.setdefault(run_id, set())

    def end_trial(self, run_id: str, status: str, error: str | None, artifact_dir: str | None) -> None:
        self.client.set_tag(run_id, "status", status)
        if error:
            self.client.set_tag(run_id, "error", error[:_MAX_TAG])
            self.client.log_text(run_id, error, "error.txt")
        if artifact_dir and os.path.isdir(artifact_dir):
            self.client.log_artifacts(run_id, artifact_dir, CHECKPOINT_ARTIFACT)
            preview = os.path.join(artifact_dir, PREVIEW_FILE)
            if os.path.isfile(preview):  # also at the top, where the run page shows it first
                self.client.log_artifact(run_id, preview)
        self.client.set_terminated(run_id, "FAILED" if status == STATUS_ERROR else "FINISHED")

    def delete_orphans(self, known_trial_ids: set[str]) -> int:
        """Runs of trials the (restored) experiment does not know: re-run under new ids, so duplicates."""
        n = 0
        for run in self.trial_runs():
            if run.data.tags.get("trial_id") not in known_trial_ids:
                self.client.delete_run(run.info.run_id)
                n += 1
        return n

    @_quiet
    def finalize(self, known_trial_ids: set[str], cell_states: dict[str, dict[str, Any]]) -> None:
        """After `fit` returns: no run stays RUNNING. `cell_states[cid]` = {"done": bool, "best": row|None}."""
        self.delete_orphans(known_trial_ids)
        for run in self.trial_runs():
            if run.info.status == "RUNNING":  # interrupted: resumed (and set RUNNING again) on the next run
                self.client.set_terminated(run.info.run_id, "KILLED")
        for cid, state in cell_states.items():
            if cid not in self._parents and not state.get("started"):
                continue
            run_id = self.record_cell(cid, state.get("best"), state.get("trials_done", 0))
            self.client.set_terminated(run_id, "FINISHED" if state.get("done") else "KILLED")
        self.record_sweep(cell_states)

    def record_sweep(self, cell_states: dict[str, dict[str, Any]]) -> str:
        """The sweep run's summary metrics (counts, mean selected scores per variant) and status."""
        from mlflow.entities import Metric

        run_id = self.sweep_run()
        values = {"trials_planned": sum(s.get("planned", 0) for s in cell_states.values()),
                  "trials_done": sum(s.get("trials_done", 0) for s in cell_states.values()),
                  "trials_failed": sum(s.get("failed", 0) for s in cell_states.values()),
                  "cells_planned": len(cell_states), "cells_done": sum(bool(s.get("done")) for s in cell_states.values())}
        by_variant: dict[str, dict[str, list[float]]] = {}
        for cid, state in cell_states.items():
            best = state.get("best") or {}
            for key in ("test_dice", "objective"):
                if _numeric(best.get(key)) and math.isfinite(best[key]):
                    variant = self.cells.get(cid, {}).get("variant", "default")
                    by_variant.setdefault(variant, {}).setdefault(key, []).append(float(best[key]))
        for variant, scores in by_variant.items():
            for key, xs in scores.items():
                values[f"mean_selected_{key}.{variant}"] = sum(xs) / len(xs)
        # Step 0 every time a driver (or sync) ends; MLflow shows the value of the latest timestamp at a step (the
        # larger value on a tie), so the time of logging makes a later, smaller value the one shown.
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()])
        done = values["trials_done"] >= values["trials_planned"]
        self.client.set_terminated(run_id, "FINISHED" if done else "KILLED")
        return run_id

    def record_cell(self, cid: str, best: dict[str, Any] | None, trials_done: int) -> str:
        """The cell's parent run with its selected trial (`selected_*` metrics, `selected_trial` tag) and
        `trials_done`; returns its run id. Used by `finalize` and by `mlflow sync` (benchmark/mlflow_mirror/backfill.py)."""
        run_id = self.parent_run(cid)
        if best:
            from mlflow.entities import Metric

            names = {"objective": "selected_objective", "test_dice": "selected_test_dice",
                     "test_iou": "selected_test_iou", "best_val_dice": "selected_val_dice",
                     "val_loss": "selected_val_loss"}
            now = int(time.time() * 1000)  # a later selection wins (see record_sweep)
            metrics = [Metric(name, float(best[k]), now, 0) for k, name in names.items()
                       if _numeric(best.get(k)) and math.isfinite(best[k])]
            if metrics:
                self.client.log_batch(run_id, metrics=metrics)
            self.client.set_tag(run_id, "selected_trial", f"{cid}#{best['trial_index']}")
        self.client.set_tag(run_id, "trials_done", str(trials_done))
        return run_id


class MLflowCallback(Callback):
    """Mirrors trials into MLflow from the driver (see the module docstring)."""

    def __init__(self, mirror: MLflowMirror):
        self.mirror = mirror
        self._runs: dict[str, str] = {}
        self._checked_orphans = False

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_runs={}, _checked_orphans=False)
        return state

    @_quiet
    def setup(self, **info):
        self.mirror.ensure_experiment()

    def _run_for(self, trial) -> str:
        if trial.trial_id not in self._runs:
            self._runs[trial.trial_id] = self.mirror.start_trial(trial.trial_id, str(trial), trial.config)
        return self._runs[trial.trial_id]

    @_quiet
    def on_step_end(self, iteration, trials, **info):
        if not self._checked_orphans:
            self._checked_orphans = True
            self.mirror.delete_orphans({t.trial_id for t in trials})

    @_quiet
    def on_trial_start(self, iteration, trials, trial, **info):
        self._run_for(trial)

    @_quiet
    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.mirror.log_result(self._run_for(trial), result)

    @_quiet
    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        status = str(result.get("status") or STATUS_OK)
        self.mirror.end_trial(self._run_for(trial), status, result.get("error") or None, _artifact_dir(trial))

    @_quiet
    def on_trial_error(self, iteration, trials, trial, **info):
        self.mirror.end_trial(self._run_for(trial), STATUS_ERROR, trial_error_text(trial), _artifact_dir(trial))


def _artifact_dir(trial) -> str | None:
    """The tuned-prompt artifact of a finished trial: `artifact/` in its last checkpoint (where
    `trainables.trial.fit` puts it), on a filesystem this driver can read."""
    try:
        checkpoint = trial.checkpoint
        path = checkpoint.path if checkpoint is not None else None
    except Exception:  # noqa: BLE001 - never started, or storage not set up
        path = None
    if path and os.path.isdir(os.path.join(path, CHECKPOINT_ARTIFACT)):
        return os.path.join(path, CHECKPOINT_ARTIFACT)
    return None
