"""The MLflow mirror of a sweep: one experiment per spec, one parent run per cell, one child run per trial.

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
- A broken tracking server never stops a sweep: failures are logged as warnings.

Tags: `tunevlseg.sweep` (one id per started sweep), `tunevlseg.role` (`cell` or `trial`), `cell_id`,
`vlsm`, `learner`, `dataset`, `variant`, `trial_id`, `trial_index`, `status`; children carry
`mlflow.parentRunId`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import Any

from ray.tune import Callback

from benchmark.sweep.failures import trial_error_text
from trainables.protocol import CHECKPOINT_ARTIFACT, STATUS_ERROR, STATUS_OK

logger = logging.getLogger("tunevlseg.tracking")

# Tune's bookkeeping keys: not metrics worth plotting.
_TUNE_KEYS = {"timestamp", "time_this_iter_s", "pid", "training_iteration", "time_since_restore",
              "iterations_since_restore", "done", "date", "hostname", "node_ip", "trial_id", "experiment_tag",
              "checkpoint_dir_name", "should_checkpoint", "config", "epoch"}
_MAX_TAG = 5000


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _quiet(method):
    """MLflow is a mirror: log and carry on when it fails."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001
            logger.warning("MLflow mirror: %s failed: %s: %s", method.__name__, type(e).__name__, e)
            return None

    return wrapper


class MLflowMirror:
    """Driver-side access to one sweep's runs (used by the callback and by the coordinator)."""

    def __init__(self, uri: str, experiment: str, sweep_id: str, cells: dict[str, dict[str, str]],
                 artifact_location: str | None = None):
        self.uri = uri
        self.experiment = experiment
        self.sweep_id = sweep_id
        self.cells = cells  # cell_id -> {vlsm, learner, dataset, variant}
        self.artifact_location = artifact_location
        self._client = None
        self._exp_id: str | None = None
        self._parents: dict[str, str] = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_client=None, _exp_id=None, _parents={})
        return state

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def ensure_experiment(self) -> str:
        if self._exp_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                self._exp_id = self.client.create_experiment(self.experiment, artifact_location=self.artifact_location,
                                                             tags={"tunevlseg.spec": self.experiment})
            else:
                self._exp_id = exp.experiment_id
        return self._exp_id

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

    def parent_run(self, cid: str) -> str:
        if not self._parents:
            for run in self._search(self._sweep_filter("cell")):
                self._parents[run.data.tags.get("cell_id")] = run.info.run_id
        if cid not in self._parents:
            tags = {"tunevlseg.sweep": self.sweep_id, "tunevlseg.role": "cell", "cell_id": cid, **self.cells[cid]}
            self._parents[cid] = self.client.create_run(self.ensure_experiment(), run_name=cid, tags=tags).info.run_id
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
            return run_id
        from mlflow.entities import Param

        cid = config["cell_id"]
        tags = {"tunevlseg.sweep": self.sweep_id, "tunevlseg.role": "trial", "cell_id": cid, **self.cells[cid],
                "trial_id": trial_id, "trial_index": str(config.get("trial_index")), "trial_name": trial_name,
                "mlflow.parentRunId": self.parent_run(cid)}
        if config.get("reseed"):  # a rerun of the cell's selected configuration with a further seed
            tags.update(reseed=str(config["reseed"]["k"]), reseed_of=str(config["reseed"]["of"]))
        run_id = self.client.create_run(self.ensure_experiment(), run_name=f"{cid}#{config.get('trial_index')}",
                                        tags=tags).info.run_id
        params = {"trial_index": config.get("trial_index"), **flatten(config.get("trial", {}))}
        params.update({f"hp.{k}": v for k, v in (config.get("hp") or {}).items()})
        self.client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        return run_id

    def log_result(self, run_id: str, result: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step = int(result.get("epoch", result.get("training_iteration", 0)) or 0)
        ts = int(float(result.get("timestamp", 0) or 0) * 1000)
        metrics = [Metric(k, float(v), ts, step) for k, v in result.items()
                   if k not in _TUNE_KEYS and _numeric(v) and not (isinstance(v, float) and math.isnan(v))]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def end_trial(self, run_id: str, status: str, error: str | None, artifact_dir: str | None) -> None:
        self.client.set_tag(run_id, "status", status)
        if error:
            self.client.set_tag(run_id, "error", error[:_MAX_TAG])
            self.client.log_text(run_id, error, "error.txt")
        if artifact_dir and os.path.isdir(artifact_dir):
            self.client.log_artifacts(run_id, artifact_dir, CHECKPOINT_ARTIFACT)
        self.client.set_terminated(run_id, "FAILED" if status == STATUS_ERROR else "FINISHED")

    def delete_orphans(self, known_trial_ids: set[str]) -> int:
        """Runs of trials the (restored) experiment does not know: re-run under new ids, so duplicates."""
        n = 0
        for run in self.trial_runs():
            if run.data.tags.get("trial_id") not in known_trial_ids:
                self.client.delete_run(run.info.run_id)
                n += 1
        return n

    def finalize(self, known_trial_ids: set[str], cell_states: dict[str, dict[str, Any]]) -> None:
        """After `fit` returns: no run stays RUNNING. `cell_states[cid]` = {"done": bool, "best": row|None}."""
        self.delete_orphans(known_trial_ids)
        for run in self.trial_runs():
            if run.info.status == "RUNNING":  # interrupted: resumed (and set RUNNING again) on the next run
                self.client.set_terminated(run.info.run_id, "KILLED")
        for cid, state in cell_states.items():
            if cid not in self._parents and not state.get("started"):
                continue
            run_id = self.parent_run(cid)
            best = state.get("best")
            if best:
                from mlflow.entities import Metric

                metrics = [Metric(f"best_{k}", float(best[k]), 0, 0) for k in
                           ("objective", "test_dice", "test_iou", "best_val_dice", "val_loss")
                           if _numeric(best.get(k)) and math.isfinite(best[k])]
                if metrics:
                    self.client.log_batch(run_id, metrics=metrics)
                self.client.set_tag(run_id, "selected_trial", f"{cid}#{best['trial_index']}")
            self.client.set_tag(run_id, "trials_done", str(state.get("trials_done", 0)))
            self.client.set_terminated(run_id, "FINISHED" if state.get("done") else "KILLED")


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
