"""Run a spec as one Ray Tune experiment: every cell's trials in one Tuner, resumable, recorded as they finish.

    run_sweep(spec, storage="/abs/results/runs")           # or: tunevlseg run SPEC --storage DIR

Design (orchestration.md §3-§5, measured on Ray 2.60):
- One `Tuner` over all cells with `MultiCellSearcher` (one Optuna study per cell): free slots go to any
  cell, the sweep restores as one experiment, and each study holds exactly its planned trials.
- Resources per trial come from the trial's config (`tune.with_resources` with a callable), so cells may
  differ (E2E takes a whole GPU, prompt tuning a fraction).
- Rerunning continues a partial sweep: `Tuner.can_restore` -> `Tuner.restore(resume_errored=True)`.
  Finished trials are not rerun; unfinished ones resume from the checkpoint of the experiment's last
  snapshot; the searcher's studies continue. A spec whose trials all finished is a no-op unless `force`.
- Parquet rows are written by a driver-side callback the moment a trial finishes (temp file + rename);
  rows of trials the restored experiment no longer knows (started after its last snapshot, then re-run
  under a new id with the same parameters) are dropped, so a resumed sweep never holds duplicates.
- Optional early stopping (`execution.scheduler: asha`): per-cell ASHA on the per-epoch val_loss
  (benchmark/sweep/scheduler.py); a stopped trial's row has status `pruned` and its study records PRUNED.
- The terminal shows one line per finished trial (cells done, trials done, best so far in the cell)
  instead of Ray's status table.
- One driver per run directory (benchmark/sweep/lock.py), taken before anything is written; a moved or
  copied run directory is re-pointed on restore (`_note_location`, `_repoint`); SIGTERM stops like Ctrl-C.
Everything is addressed by absolute paths: trials run in temporary working directories.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import json
import logging
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ray.tune import Callback

from benchmark.plan.matrix import Plan, build_plan, check_paths
from benchmark.plan.spec import Selection, Spec
from benchmark.results import records
from benchmark.results.run_dir import (
    MLFLOW_ARTIFACTS,
    MLFLOW_DB,
    OPTUNA_DB,
    PLAN_FILE,
    RUN_FORMAT,
    SELECTED_FILE,
    TRIALS_DIR,
    TUNE_DIR,
    RunDir,
    select,
)
from benchmark.sweep import reseed
from benchmark.sweep.failures import trial_error_text
from benchmark.sweep.lock import RunLock
from benchmark.sweep.progress import disk_usage, eta_text, human_bytes
from benchmark.sweep.snapshots import RestoreLost, SnapshotError
from benchmark.sweep.storage import check_free_space, check_storage, check_uri, default_uri
from trainables.config import ConfigError
from trainables.protocol import STATUS_ERROR, STATUS_OK, STATUS_PRUNED
from trainables.registry import UnknownNameError


@dataclass
class SweepResult:
    run_dir: Path
    planned: int
    done: int = 0  # trials with a Parquet row
    failed: int = 0  # rows with status "error"
    interrupted: bool = False
    stalled: bool = False  # Tune had nothing left to run, yet the plan is not complete (see _sweep)
    terminated: bool = False  # stopped by SIGTERM (state saved, resumable)
    noop: bool = False
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.terminated:
            return 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended
        if self.interrupted:
            return 130
        return 1 if self.failed or self.stalled else 0


# ---- helpers shared with the callbacks (module level: pickled by reference into tuner.pkl) -------------


def trial_resources(config: dict) -> dict:
    return {"cpu": float(config["resources"]["cpu"]), "gpu": float(config["resources"]["gpu"])}


def trial_name(trial) -> str:
    return f"{trial.config.get('cell_id', 'trial')}#{trial.config.get('trial_index', '?')}"


def trial_dirname(trial) -> str:
    return f"{trial.config.get('cell_id', 'trial')}_{int(trial.config.get('trial_index', 0)):03d}_{trial.trial_id}"


def load_trainable(path: str) -> Callable:
    module, _, name = path.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"trainable: cannot import {path!r} ({type(e).__name__}: {e})") from None
    if not callable(fn):
        raise ConfigError(f"trainable: {path!r} is not callable")
    return fn


def trial_config_validator(path: str) -> Callable[[dict], Any] | None:
    """The trainable module's `validate_trial_config(dict)`, else its `TrialConfig.from_dict`: used to
    reject a bad fixed setting before any trial starts instead of in every trial."""
    module = importlib.import_module(path.rpartition(".")[0])
    fn = getattr(module, "validate_trial_config", None)
    if fn is None and hasattr(getattr(module, "TrialConfig", None), "from_dict"):
        fn = module.TrialConfig.from_dict
    return fn


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
        _say(f"sweep {self.spec_name}: {len(self.cells)} cells, {total} trials planned, {done} already recorded")

    # -- bookkeeping
    def _counts(self) -> tuple[int, int]:
        return (sum(len(r) for r in self._rows.values()), sum(c["planned"] for c in self.cells.values()))

    def _cells_done(self) -> int:
        return sum(1 for cid, c in self.cells.items() if len(self._rows.get(cid, {})) >= c["planned"])

    def _prune(self, trials) -> None:
        """Drop rows of trials this experiment does not know (see the module docstring)."""
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
            what = f"PRUNED after {row.get('epochs_run')} epochs (val_loss={_fmt(row.get('val_loss'))})"
        elif row["status"] != STATUS_OK:
            what = f"{row['status'].upper()}: {(row.get('error') or '')[:120]}"
        best = select(list(self._rows[cid].values()), Selection(**self.select))
        best_txt = f"best #{best['trial_index']} {by}={best[by]:.4g}" if best else "no ok trial yet"
        n_cell = len(self._rows[cid])
        elapsed = time.time() - self._t0
        eta = eta_text(self._durations, total - done, self._slots)
        _say(f"[{_hms(elapsed)}] {cid} #{row['trial_index']} {row['status']} {what} | cell "
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


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _say(line: str) -> None:
    print(line, flush=True)


# ---- the sweep -------------------------------------------------------------------------------------------


def _cells_info(plan: Plan) -> dict[str, dict[str, Any]]:
    return {c.id: {"keys": c.keys, "planned": c.trials + c.reseeds} for c in plan.cells}


def _read_existing(run_dir: Path, plan: Plan) -> dict[str, dict[str, dict]]:
    rows = RunDir(run_dir).rows()
    return {c.id: rows[c.id] for c in plan.cells if c.id in rows}


def _is_complete(plan: Plan, rows: dict[str, dict[str, dict]]) -> bool:
    return all(len(rows.get(c.id, {})) >= reseed.expected(c, rows.get(c.id, {}), plan.spec.select)
               and all(r["status"] != STATUS_ERROR for r in rows[c.id].values()) for c in plan.cells)


def _archive(run_dir: Path, uri: str | None, experiment: str) -> Path:
    """`--force`: the old run goes to previous/<timestamp>/, its MLflow runs with it. The run directory's
    own MLflow store moves along (its artifact paths re-pointed there), so the new sweep's runs never share
    names with the old ones; on a server the old sweep's runs are ended and deleted (MLflow's trash:
    restorable), so none stays RUNNING or doubles a name in the experiment's view."""
    dest = run_dir / "previous" / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True)
    try:
        old_sweep = RunDir(run_dir).plan_state().get("sweep_id")
    except (ConfigError, OSError):  # a missing or unreadable plan.json: nothing to look up on a server
        old_sweep = None
    local = uri is None or uri == default_uri(run_dir)
    names = (TUNE_DIR, TRIALS_DIR, SELECTED_FILE, PLAN_FILE, OPTUNA_DB) + ((MLFLOW_DB, MLFLOW_ARTIFACTS) if local else ())
    for name in names:
        if (run_dir / name).exists():
            shutil.move(str(run_dir / name), str(dest / name))
    if local and (dest / MLFLOW_DB).exists():
        from benchmark.sweep.mlflow_paths import repoint

        repoint(dest)
    elif not local and old_sweep:
        _retire_sweep_runs(uri, experiment, old_sweep)
    return dest


def _retire_sweep_runs(uri: str, experiment: str, sweep_id: str) -> None:
    from benchmark.sweep.tracking import MLflowMirror

    mirror = MLflowMirror(uri, experiment, sweep_id, {})
    try:
        for role in ("trial", "cell"):
            for run in mirror._search(mirror._sweep_filter(role)):
                if run.info.status == "RUNNING":
                    mirror.client.set_terminated(run.info.run_id, "KILLED")
                mirror.client.set_tag(run.info.run_id, "tunevlseg.archived", "--force")
                mirror.client.delete_run(run.info.run_id)
    except Exception as e:  # noqa: BLE001 - MLflow is a mirror: a dead server does not stop --force
        mirror.disable("--force (retiring the old sweep's runs)", e)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def plan_changes(old: dict[str, Any], new: dict[str, Any], limit: int = 12) -> list[str]:
    """`key: old -> new` for every setting that differs; a change shared by several cells is listed once
    as `cells.<N cells>.key`."""
    a, b = _flat(old), _flat(new)
    missing = object()
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va == vb:
            continue
        cell, rest = None, key
        if key.startswith("cells."):
            for cid in sorted(set(old.get("cells", {})) | set(new.get("cells", {})), key=len, reverse=True):
                if key.startswith(f"cells.{cid}.") or key == f"cells.{cid}":
                    cell, rest = cid, key[len(f"cells.{cid}"):]
                    break
        shown = tuple("(none)" if v is missing else json.dumps(v, default=str) for v in (va, vb))
        grouped.setdefault((rest, *shown), []).append(cell or "")
    out = []
    for (rest, va, vb), cells in grouped.items():
        where = (f"cells.{cells[0]}" if len(cells) == 1 else f"cells.<{len(cells)} cells>") if cells[0] else ""
        if not rest:
            what = f"cell {cells[0]}" if len(cells) == 1 else f"{len(cells)} cells"
            out.append(f"{what}: {'added' if va == '(none)' else 'removed'}")
            continue
        out.append(f"{where}{rest}: {va} -> {vb}")
    return out if len(out) <= limit else out[:limit] + [f"... and {len(out) - limit} more"]


def _write_plan_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def _plan_state(run_dir: Path, plan: Plan, force: bool) -> dict[str, Any]:
    """The sweep id and plan of this run directory; refuses to resume a sweep whose plan changed, naming
    every changed setting. Records where the run directory is (`run_dir`), so a moved run is noticed."""
    path = RunDir(run_dir).plan_file
    fingerprint = plan.fingerprint()
    started = (run_dir / TUNE_DIR).exists() or RunDir(run_dir).has_trials()
    if path.exists() and not force:
        state = RunDir(run_dir).plan_state()
        if state.get("run_format") != RUN_FORMAT:  # an older run, resumed (and from now on written) by this one
            state.update(run_format=RUN_FORMAT, written_by=_version())
            _write_plan_state(path, state)
        old = state.get("fingerprint") or {}
        if old.get("version") is None and old == plan.legacy_fingerprint():
            old = fingerprint  # started before fingerprints covered the trial settings: nothing to compare
            state["fingerprint"] = fingerprint
            _write_plan_state(path, state)
        if old != fingerprint and started:
            changes = plan_changes(old, fingerprint)
            raise ConfigError(f"{run_dir} was started with a different plan; changed: {'; '.join(changes)}. Undo the "
                              "change, pass --force to start over (the old run is kept under previous/), or use "
                              "another --storage")
        if old == fingerprint:
            from benchmark.sweep.versions import warn_on_drift  # a resume: did the environment change?

            warn_on_drift(run_dir)
            if "space" not in state:
                # A plan.json written before the searched domains were recorded: add them, keep the sweep id.
                state["space"] = plan.searched_space()
                _write_plan_state(path, state)
            return state
    state = {"sweep_id": uuid.uuid4().hex[:12], "run_format": RUN_FORMAT, "written_by": _version(),
             "fingerprint": fingerprint,
             "created_at": records.now_utc().isoformat(), "run_dir": str(run_dir.resolve()),
             "space": plan.searched_space()}
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_plan_state(path, state)
    return state


def _recorded(run_dir: Path) -> dict[str, Any]:
    """plan.json of an existing run (empty for a new or unreadable one: the sweep's own checks say why)."""
    try:
        return RunDir(run_dir).plan_state() if RunDir(run_dir).plan_file.is_file() else {}
    except ConfigError:
        return {}


def recorded_uri(run_dir: Path) -> str | None:
    """The MLflow tracking URI the run was last driven with, when it was not the run's own mlflow.db."""
    return (_recorded(run_dir).get("mlflow") or {}).get("uri")


def _version() -> str:
    from trainables.resources import version

    return version()


def _check_cluster(plan: Plan, run_dir: Path) -> None:
    """Per-trial resources must fit a node, and on several nodes the storage must be shared."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    most = {k: max((n["Resources"].get(k, 0.0) for n in nodes), default=0.0) for k in ("CPU", "GPU")}
    for c in plan.cells:
        for key, res in (("CPU", "cpu"), ("GPU", "gpu")):
            need = c.resources[res]
            if need > most[key] + 1e-9:
                have = "no GPU" if key == "GPU" and most[key] == 0 else f"at most {most[key]:g} {key} per node"
                raise ConfigError(f"cell {c.id} asks for {need:g} {key} per trial but the Ray cluster has {have}; "
                                  f"lower resources.{res} in the spec (or a rule), or connect to a bigger cluster")
    if len(nodes) > 1:
        _check_shared_storage(run_dir, nodes)


def _check_shared_storage(run_dir: Path, nodes: list[dict]) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / f".storage-check-{uuid.uuid4().hex[:8]}"
    marker.write_text("tunevlseg")

    @ray.remote(num_cpus=0)
    def _sees(path: str) -> bool:
        return os.path.exists(path)

    try:
        refs = {n["NodeManagerAddress"]: _sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(str(marker)) for n in nodes}
        blind = [ip for ip, ok in zip(refs, ray.get(list(refs.values()), timeout=120)) if not ok]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise ConfigError(f"storage {run_dir.parent} is not shared: node(s) {', '.join(blind)} cannot see it; "
                          "use a path on a filesystem mounted at the same place on every node")


def _quiet_libraries(verbose: bool) -> None:
    """Readable progress lines instead of Ray's status table and library chatter (unless --verbose)."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if verbose:
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter honours verbose=0 completely
    import mlflow  # noqa: F401 - mlflow sets its logger level on import: import first, then quieten it
    import optuna

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # Restored trials that never reported anything are expected after a kill; Ray warns about each.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # On Ctrl-C Tune suggests `Tuner.restore(...)`; our own one-line hint names the command to rerun.
    logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)
    # A failed trial's traceback: our progress line names the error, the full text is in the trial's
    # error.txt, the Parquet `error` column and the MLflow run (and on screen with --verbose).
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)  # "NaN or Inf found": a failed trial's +inf

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def connect_ray(address: str | None, num_cpus: int | None, num_gpus: float | None, verbose: bool) -> bool:
    """Start or join Ray; returns whether we started it (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.INFO if verbose else logging.WARNING,
                              "log_to_driver": verbose}
    if address:
        kwargs["address"] = address
    else:
        kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False)
    ray.init(**kwargs)
    return True


def run_sweep(spec: Spec, storage: str | os.PathLike, *, trainable: str | None = None, address: str | None = None,
              force: bool = False, num_cpus: int | None = None, num_gpus: float | None = None,
              mlflow_uri: str | None = None, verbose: bool = False, resume_hint: str | None = None,
              plan: Plan | None = None, callbacks: list | tuple = (), optuna_storage: str | None = None,
              retry_failed: bool = False) -> SweepResult:
    """Run (or continue) the sweep of `spec` under `<storage>/<spec.name>/`. Validates everything it can
    before the first trial starts; see the module docstring for the behaviour. `plan` replaces the spec's
    own (a rehearsal's, benchmark/sweep/smoke.py); `callbacks` are extra Tune callbacks."""
    storage = check_storage(storage)
    label = Path(spec.path).name if spec.path else f"spec {spec.name}"
    if plan is None:
        try:
            plan = build_plan(spec)
        except (ConfigError, UnknownNameError) as e:
            raise ConfigError(f"{label}: {e}") from None
    check_paths(plan)
    trainable_path = trainable or spec.trainable
    fn = load_trainable(trainable_path)
    validate = trial_config_validator(trainable_path)
    if validate is not None:
        from benchmark.plan import search_space

        for c in plan.cells:
            sample = {p.name: p.example() for p in c.params}
            try:
                validate(search_space.apply_values(json.loads(json.dumps(c.config)), c.params, sample))
            except (ConfigError, UnknownNameError) as e:
                # The trial config is `fixed` with the cell's rules and variant applied: say so.
                raise ConfigError(f"{label}: fixed/rules, cell {c.id}: {e}") from None
    run_dir = storage / spec.name
    uri = None
    if spec.tracking.mlflow:

        # A resume without --mlflow keeps the server the run was started with (plan.json `mlflow.uri`), so the
        # printed hints, which name no URI, mirror into the same place.
        uri = mlflow_uri or spec.tracking.uri or recorded_uri(run_dir) or default_uri(run_dir)
        check_uri(uri)
    from benchmark.sweep.studies import check_url

    optuna_url = optuna_storage or spec.search.storage or _recorded(run_dir).get("optuna_storage")
    check_url(optuna_url)
    result = SweepResult(run_dir=run_dir, planned=plan.total_trials)
    hint = resume_hint or f"tunevlseg run {spec.path or spec.name} --storage {storage}"
    # One driver per run directory (a second one would treat the first one's trials as orphans), taken
    # before anything is written; creating the lock file is also the check that the storage is writable.
    lock = RunLock(run_dir, command=hint).acquire()
    if lock.took_over:
        _say(f"took over {lock.path} from a dead driver (pid {lock.took_over.get('pid')} on "
             f"{lock.took_over.get('host')}: {lock.took_over['reason']})")
    try:
        check_free_space(run_dir)
        return _storage_errors_in_one_line(hint, _run_locked, spec, plan, fn, run_dir, uri, result, hint, storage,
                                           force=force, address=address, num_cpus=num_cpus, num_gpus=num_gpus,
                                           verbose=verbose, callbacks=list(callbacks), optuna_url=optuna_url,
                                           retry_failed=retry_failed)
    finally:
        lock.release()


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _storage_errors_in_one_line(hint: str, fn: Callable, *args, **kwargs):
    """A run directory that fills up, turns read-only or unwritable mid-sweep (wherever the write was: a
    Parquet row, a Tune snapshot, a checkpoint, even wrapped by Tune) ends in one line with the way back.
    Every finished trial is in Parquet already; the rerun resumes."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - only storage errors are rephrased, the rest re-raised
        cause = _cause(e, OSError)
        if cause is None or cause.errno not in _STORAGE_ERRNOS:
            raise
        where = f" ({cause.filename})" if cause.filename else ""
        fix = ("free space there" if cause.errno in (errno.ENOSPC, errno.EDQUOT) else
               "make it writable again (permissions, a read-only remount)" if cause.errno != errno.EIO else
               "check that disk")
        raise ConfigError(f"the run directory stopped taking writes: {cause.strerror or cause}{where}; {fix}, then "
                          f"resume with: {hint} (finished trials are kept)") from None


def _run_locked(spec: Spec, plan: Plan, fn: Callable, run_dir: Path, uri: str | None, result: SweepResult, hint: str,
                storage: Path, *, force: bool, address: str | None, num_cpus: int | None, num_gpus: float | None,
                verbose: bool, callbacks: list, optuna_url: str | None, retry_failed: bool = False) -> SweepResult:
    existing = _read_existing(run_dir, plan)
    if not force and RunDir(run_dir).plan_file.exists() and _is_complete(plan, existing):
        _plan_state(run_dir, plan, force=False)  # a changed plan is still an error, not a silent no-op
        _summarise(result, plan, existing, spec)
        result.noop = True
        _say(f"nothing to do: all {plan.total_trials} trials of {spec.name} are recorded in {run_dir} "
             "(pass --force to run the sweep again)")
        return result
    if not force:
        _plan_state(run_dir, plan, force=False)  # a changed plan is refused before Ray starts
    _quiet_libraries(verbose)
    if address:
        # On a cluster, check every node before any trial starts: shared storage, the dataset roots, MLflow
        # reachable from the workers, the same package version (benchmark/sweep/preflight.py).
        from benchmark.sweep.preflight import require_preflight

        roots = {c.dataset: c.config["data"]["root"] for c in plan.cells if c.config["data"].get("root")}
        http = uri if uri and uri.startswith(("http://", "https://")) else None
        require_preflight(str(storage), roots, http, address)
    started_ray = connect_ray(address, num_cpus, num_gpus, verbose)
    try:
        return _sweep(spec, plan, fn, run_dir, uri, result, hint, force, verbose, callbacks, optuna_url,
                      retry_failed=retry_failed)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _sweep(spec: Spec, plan: Plan, fn: Callable, run_dir: Path, uri: str | None, result: SweepResult, hint: str,
           force: bool, verbose: bool, extra_callbacks: list | None = None,
           optuna_url: str | None = None, retry_failed: bool = False) -> SweepResult:
    _check_cluster(plan, run_dir)
    if force and run_dir.exists():
        moved = _archive(run_dir, uri, spec.name)
        _say(f"--force: previous results moved to {moved}")
    exp_path = run_dir / TUNE_DIR
    expect = _restorable(exp_path, run_dir, plan, hint)  # before anything is written
    if retry_failed:
        _mark_failed_for_retry(exp_path, run_dir, plan, expect)
    state = _plan_state(run_dir, plan, force)
    moved_from = _note_location(run_dir, state)
    if state.get("optuna_storage") != optuna_url:  # where the studies are: a resume without the option keeps it
        state["optuna_storage"] = optuna_url
        _write_plan_state(RunDir(run_dir).plan_file, state)

    from benchmark.sweep.checkpoints import KeepFinalCheckpoint
    from benchmark.sweep.in_place import RestoredInPlace
    from benchmark.sweep.tracking import MLflowCallback, MLflowMirror, cell_params, system_tags

    records_cb = RecordsCallback(str(run_dir), spec.name, _cells_info(plan), dataclasses.asdict(spec.select),
                                 expect_trials=expect)
    callbacks: list = [RestoredInPlace(str(run_dir), hint), PrunedMarker(), records_cb, KeepFinalCheckpoint()]
    mirror = None
    if uri is not None:
        artifacts = RunDir(run_dir).mlflow_artifacts.as_uri() if uri.startswith("sqlite") else None  # a server stores its own
        if uri == default_uri(run_dir):  # a run directory copied or moved elsewhere: re-point its artifact paths
            _repoint_store(run_dir)
        mirror = MLflowMirror(uri, spec.name, state["sweep_id"], {c.id: c.keys for c in plan.cells},
                              artifact_location=artifacts, description=spec.description,
                              params={c.id: cell_params(c) for c in plan.cells},
                              tags=system_tags(f"tunevlseg run {spec.path or spec.name}"))
        mirror.sync_hint = f"tunevlseg mlflow sync {run_dir}"
        _note_mirror(run_dir, state, mirror)
        # Create the DB in the driver, before any trial (migration races otherwise); an unreachable server
        # turns the mirror off with one warning instead of stopping the sweep.
        if mirror.connect() is not None:
            from benchmark.sweep.backfill import backfill

            backfill(run_dir, mirror, quiet=True)  # rows a dead server (or a killed driver) left out
        callbacks.append(MLflowCallback(mirror))
        from benchmark.sweep.studies import StudyLinks, StudyStore

        callbacks.append(StudyLinks(StudyStore(run_dir, optuna_url), mirror))
    callbacks += extra_callbacks or []

    from ray import tune

    from benchmark.sweep.searcher import MultiCellSearcher

    try:
        wrapped = tune.with_resources(fn, trial_resources)
        if expect is not None:
            _say(f"resuming the sweep in {exp_path}")
            tuner = tune.Tuner.restore(str(exp_path), trainable=wrapped, resume_errored=True)
            _repoint(tuner, callbacks, run_dir, moved_from, spec.select, optuna_url)
        else:
            s = spec.search
            searcher = MultiCellSearcher(plan.cells, metric=s.metric, mode=s.mode, sampler=s.sampler,
                                         n_startup_trials=s.n_startup_trials, multivariate=s.multivariate,
                                         constant_liar=s.constant_liar,
                                         max_concurrent_per_cell=s.max_concurrent_per_cell, run_dir=str(run_dir),
                                         optuna_storage=optuna_url, select=spec.select)
            ex = spec.execution
            scheduler = None
            if ex.scheduler == "asha":
                from benchmark.sweep.scheduler import CellASHA

                scheduler = CellASHA(grace_period=ex.grace_period, reduction_factor=ex.reduction_factor)
            tuner = tune.Tuner(
                wrapped,
                tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                                            max_concurrent_trials=ex.max_concurrent_trials,
                                            reuse_actors=ex.reuse_actors, trial_name_creator=trial_name,
                                            trial_dirname_creator=trial_dirname),
                run_config=tune.RunConfig(
                    name=TUNE_DIR, storage_path=str(run_dir), verbose=1 if verbose else 0,
                    failure_config=tune.FailureConfig(max_failures=ex.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=ex.checkpoints_to_keep),
                    callbacks=callbacks),
            )
        with _sigterm_stops_tune() as terminated:
            try:
                grid = tuner.fit()
            except Exception as e:  # noqa: BLE001 - only our own refusal is turned into one line
                lost = _cause(e, RestoreLost)
                if lost is None:
                    raise
                raise SnapshotError(f"{lost}. Ray Tune could not restore {exp_path} (run with --verbose to see why); "
                                    f"put back a good copy of its snapshot files, or start over with --force (the "
                                    f"old results are kept under previous/)") from None
        known = _known_trial_ids(grid)
        unfinished = _unfinished(grid)
        result.terminated = bool(terminated)
    except KeyboardInterrupt:
        rows = _read_existing(run_dir, plan)
        _summarise(result, plan, rows, spec)
        result.interrupted = True
        _say(f"interrupted; resume with: {hint}")
        return result

    rows = _read_existing(run_dir, plan)
    if known is not None:  # the same orphan rule as the callback, in case no step ran after a restore
        rows = RunDir(run_dir).drop_orphans(rows, known)
    RunDir(run_dir).write_selected(_cells_info(plan), rows, spec.select)
    _summarise(result, plan, rows, spec)
    result.interrupted = result.done < result.planned
    if result.interrupted and not result.terminated and unfinished == 0:
        # Tune ran out of trials to run (nothing pending or running), yet the plan is not complete: a rerun
        # would end the same way, so this is not "stopped before the end".
        result.interrupted, result.stalled = False, True
    if mirror is not None and known is not None:
        mirror.finalize(known, {cid: {"done": info["done"] >= info["planned"], "trials_done": info["done"],
                                      "best": info["best"], "started": info["done"] > 0,
                                      "planned": info["planned"], "failed": info["failed"]}
                                for cid, info in result.cells.items()})
    _print_summary(result, spec)
    if mirror is not None and not mirror.disabled:
        _say(f"MLflow: {mirror.uri} (make mlflow-ui RUN={run_dir}, then open {mirror.ui_link()})")
    if result.terminated:
        _say(f"terminated (SIGTERM) with {result.done}/{result.planned} trials; the state is saved; resume with: {hint}")
    elif result.interrupted:
        _say(f"stopped before the end ({result.done}/{result.planned} trials); resume with: {hint}")
    elif result.stalled:
        short = [cid for cid, info in result.cells.items() if info["done"] < info["planned"]]
        _say(f"the sweep ended with {result.done}/{result.planned} trials: the searcher scheduled no more trials for "
             f"{', '.join(short[:5])}{' ...' if len(short) > 5 else ''}; rerunning will not change that (a bug: "
             f"please report it with {run_dir / TUNE_DIR})")
    return result


def _mark_failed_for_retry(exp_path: Path, run_dir: Path, plan: Plan, expect: frozenset[str] | None) -> None:
    failed = {tid for cell in _read_existing(run_dir, plan).values() for tid, r in cell.items()
              if r["status"] == STATUS_ERROR}
    if not failed or expect is None:
        _say("--retry-failed: no failed trial to run again")
        return
    from benchmark.sweep.snapshots import mark_for_retry

    n = mark_for_retry(exp_path, failed & expect)
    _say(f"--retry-failed: {n} failed trial(s) run again (same trial ids and parameters); the other rows are kept")


def _restorable(exp_path: Path, run_dir: Path, plan: Plan, hint: str) -> frozenset[str] | None:
    """The trial ids of the Tune snapshot that will be restored (None: a new experiment). A snapshot that
    does not load, or recorded rows without any snapshot, stop here, before Ray changes anything."""
    from ray import tune

    recorded = sum(len(cell) for cell in _read_existing(run_dir, plan).values())
    if tune.Tuner.can_restore(str(exp_path)):
        from benchmark.sweep import snapshots

        return snapshots.check(exp_path, recorded, hint)
    if recorded:
        raise SnapshotError(f"{run_dir} holds {recorded} recorded trial(s) but {exp_path} has no Ray Tune snapshot to "
                            f"resume from; a new experiment would run them again. Put back {exp_path} (from a "
                            f"backup), or start over with --force (the old results are kept under previous/)")
    return None


def _cause(error: BaseException, kind: type) -> BaseException | None:
    """`error` or the first of its causes/contexts that is a `kind` (Tune may wrap a callback's error)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _unfinished(grid) -> int | None:
    """Trials Tune still had pending or running when `fit` returned (after Ctrl-C: the saved ones)."""
    analysis = getattr(grid, "_experiment_analysis", None)
    trials = getattr(analysis, "trials", None)
    if trials is None:
        return None
    return sum(t.status not in ("TERMINATED", "ERROR") for t in trials)


def _repoint_store(run_dir: Path) -> None:
    """The run's own MLflow store follows a moved run directory; a store that is not a database any more
    (torn by a full disk, overwritten) is one line: the mirror is rebuilt from Parquet."""
    import sqlite3

    from benchmark.sweep.mlflow_paths import repoint

    try:
        repoint(run_dir)
    except sqlite3.DatabaseError as e:
        db = RunDir(run_dir).mlflow_db
        raise ConfigError(f"{db} is not a readable MLflow database ({e}); move it aside (e.g. to {db.name}.broken) "
                          "and rerun: the mirror is rebuilt from the Parquet rows (tunevlseg mlflow sync)") from None


def _note_location(run_dir: Path, state: dict[str, Any]) -> str | None:
    """Where this run directory was last driven from; returns the old path when it moved or was copied.
    The run's own MLflow store is re-pointed in `_sweep` (benchmark/sweep/mlflow_paths.py, the one
    implementation; a copy's DB is its own file, so the original stays untouched), Tune's snapshots in
    `_repoint`."""
    here = str(run_dir.resolve())
    before = state.get("run_dir")
    if before == here:
        return None
    if before:
        _say(f"run directory moved from {before} to {here}: continuing here, nothing is written to the old path")
    state["run_dir"] = here
    _write_plan_state(RunDir(run_dir).plan_file, state)
    return before


def _note_mirror(run_dir: Path, state: dict[str, Any], mirror) -> None:
    """What `tunevlseg mlflow sync` needs to create runs exactly as this driver's mirror does, beyond the
    fingerprint (which holds the cells' params): the spec's description and the system tags."""
    want = {"description": mirror.description, "tags": dict(mirror.tags),
            "uri": None if mirror.uri == default_uri(run_dir) else mirror.uri}  # None: the run's own mlflow.db
    if state.get("mlflow") != want:
        state["mlflow"] = want
        _write_plan_state(RunDir(run_dir).plan_file, state)


def _repoint(tuner, callbacks: list, run_dir: Path, moved_from: str | None, rule: Selection | None = None,
             optuna_url: str | None = None) -> None:
    """A restored Tuner brings back the callbacks and searcher pickled at the first start, with the run
    directory (and MLflow URI) of that start. Tune re-points its own trials to the restored path; ours are
    replaced with the ones built by this driver (their state is rebuilt from Parquet and MLflow anyway),
    and the searcher is told where the run directory is now (its `restore` keeps that path)."""
    internal = getattr(tuner, "_local_tuner", None)
    if internal is None or not hasattr(internal, "_run_config"):
        raise RuntimeError("Ray Tune's Tuner changed: cannot re-point the restored callbacks "
                           "(benchmark.sweep.coordinator._repoint)")
    internal._run_config.callbacks = callbacks
    searcher = getattr(internal._tune_config, "search_alg", None)
    if searcher is not None and hasattr(searcher, "run_dir"):
        searcher.run_dir = str(run_dir)
        searcher.optuna_storage = optuna_url  # this driver's (--optuna-storage, else the recorded one); kept by restore
        searcher.driver_storage = True
        if rule is not None and getattr(searcher, "reseeds", None) is not None:
            searcher.reseed_rule = rule  # applied again after the searcher restores its snapshot (searcher.restore)
            searcher.reseeds.adopt(rule)
    _repoint_search_generator(run_dir / TUNE_DIR, run_dir)


def _repoint_search_generator(exp_path: Path, run_dir: Path) -> None:
    """Tune's SearchGenerator snapshot (`search_gen_state-*.json`, cloudpickle) holds the Experiment of the
    first start, whose StorageContext names the old run directory; every trial created after the restore
    takes that storage and fails with "Unable to set up cluster storage" (or writes to the old place). Tune
    re-points the trials it restores but not this one: the newest snapshot, the one Tune restores, is
    rewritten with the storage path of `run_dir`."""
    import ray.cloudpickle as cloudpickle

    files = sorted(exp_path.glob("search_gen_state-*.json"))
    if not files:
        return
    newest = files[-1]  # Tune restores max(paths)
    state = cloudpickle.loads(newest.read_bytes())
    if not isinstance(state, dict):
        return
    storage = getattr(state.get("experiment"), "storage", None)
    here = Path(run_dir).as_posix()  # as Tune.restore derives it for the trials it re-points
    changed = storage is not None and getattr(storage, "storage_fs_path", here) != here
    if changed:
        storage.storage_fs_path = here  # the same object as experiment.spec["storage"] (one pickle)
    if state.get("finished"):
        # The generator stops asking once the searcher said FINISHED. A rerun may have more to ask for
        # (reruns over seeds under a corrected selection rule); a searcher with nothing left says FINISHED
        # again at once.
        state["finished"], changed = False, True
    if not changed:
        return
    tmp = newest.with_name(f".{newest.name}.tmp")
    tmp.write_bytes(cloudpickle.dumps(state))
    os.replace(tmp, newest)


class _sigterm_stops_tune:
    """SIGTERM (a batch system's stop, `kill`) stops the sweep the way Ctrl-C does: Tune saves the state and
    `fit` returns. Ray's own driver handler would `sys.exit` mid-callback and print a C++ stack dump."""

    def __enter__(self) -> list[int]:
        import signal
        import threading

        self.got: list[int] = []
        self.previous = None
        if threading.current_thread() is not threading.main_thread():
            return self.got

        def on_term(signum, frame):
            self.got.append(signum)
            handler = signal.getsignal(signal.SIGINT)  # Tune's while fit runs: stop and save
            if callable(handler):
                handler(signal.SIGINT, frame)
            else:
                raise KeyboardInterrupt

        self.previous = signal.signal(signal.SIGTERM, on_term)
        return self.got

    def __exit__(self, *exc) -> None:
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _known_trial_ids(grid) -> set[str] | None:
    analysis = getattr(grid, "_experiment_analysis", None)
    trials = getattr(analysis, "trials", None)
    return None if trials is None else {t.trial_id for t in trials}


def _summarise(result: SweepResult, plan: Plan, rows: dict[str, dict[str, dict]], spec: Spec) -> None:
    result.done = result.failed = 0
    for c in plan.cells:
        cell_rows = list(rows.get(c.id, {}).values())
        failed = sum(r["status"] == STATUS_ERROR for r in cell_rows)
        best = select(cell_rows, spec.select)
        result.cells[c.id] = {"planned": reseed.expected(c, cell_rows, spec.select), "done": len(cell_rows),
                              "failed": failed, "best": best}
        result.done += len(cell_rows)
        result.failed += failed
    result.planned = sum(info["planned"] for info in result.cells.values())  # no reseeds without a selection


def _print_summary(result: SweepResult, spec: Spec) -> None:
    by, report = spec.select.by, spec.select.report
    width = max((len(c) for c in result.cells), default=10)
    _say("")
    _say(f"{'cell':<{width}}  trials  failed  selected  {by:>10}  {report:>10}")
    for cid, info in result.cells.items():
        best = info["best"]
        sel = f"#{best['trial_index']}" if best else "-"
        val = _fmt(best.get(by)) if best else "-"
        rep = _fmt(best.get(report)) if best else "-"
        trials = f"{info['done']:>3}/{info['planned']:<3}"
        _say(f"{cid:<{width}}  {trials} {info['failed']:>6}  {sel:>8}  {val:>10}  {rep:>10}")
    _say(f"{result.done}/{result.planned} trials recorded, {result.failed} failed -> {result.run_dir} "
         f"({human_bytes(disk_usage(result.run_dir))} on disk)")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else "-"
