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
Everything is addressed by absolute paths: trials run in temporary working directories.
"""

from __future__ import annotations

import dataclasses
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
from benchmark.results.run_dir import PLAN_FILE, SELECTED_FILE, TRIALS_DIR, TUNE_DIR, RunDir, select
from benchmark.sweep import reseed
from benchmark.sweep.failures import trial_error_text
from benchmark.sweep.storage import check_storage, check_uri, default_uri
from trainables.config import ConfigError
from trainables.protocol import STATUS_ERROR, STATUS_OK, STATUS_PRUNED


@dataclass
class SweepResult:
    run_dir: Path
    planned: int
    done: int = 0  # trials with a Parquet row
    failed: int = 0  # rows with status "error"
    interrupted: bool = False
    noop: bool = False
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed else 0


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

    def __init__(self, run_dir: str, spec_name: str, cells: dict[str, dict[str, Any]], select: dict[str, str]):
        self.run_dir = run_dir
        self.spec_name = spec_name
        self.cells = cells  # cell_id -> {"keys": {...}, "planned": int}
        self.select = select  # {"by", "mode", "report"}
        self._reset()

    def _reset(self):
        self._rows: dict[str, dict[str, dict]] = {}
        self._started: dict[str, Any] = {}
        self._prov: dict[str, Any] = {}
        self._pruned = False
        self._t0 = time.time()

    def __getstate__(self):
        state = dict(self.__dict__)
        for k in ("_rows", "_started", "_prov", "_pruned", "_t0"):
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
        self._rows = RunDir(self.run_dir).drop_orphans(self._rows, {t.trial_id for t in trials})
        self._pruned = True

    def _write_cell(self, cid: str) -> None:
        RunDir(self.run_dir).write_cell(cid, self._rows.get(cid, {}).values())

    def _write_selected(self) -> None:
        RunDir(self.run_dir).write_selected(self.cells, self._rows, Selection(**self.select))

    def on_step_end(self, iteration, trials, **info):
        if not self._pruned:
            self._prune(trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        prev = self._rows.get(trial.config["cell_id"], {}).get(trial.trial_id)
        self._started.setdefault(trial.trial_id, prev["started_at"] if prev else records.now_utc())

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trials, trial, error=None)

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
        _say(f"[{_hms(elapsed)}] {cid} #{row['trial_index']} {row['status']} {what} | cell "
             f"{n_cell}/{self.cells[cid]['planned']} {best_txt} | trials {done}/{total}, cells "
             f"{self._cells_done()}/{len(self.cells)} done")



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


def _archive(run_dir: Path) -> Path:
    dest = run_dir / "previous" / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True)
    for name in (TUNE_DIR, TRIALS_DIR, SELECTED_FILE, PLAN_FILE):
        if (run_dir / name).exists():
            shutil.move(str(run_dir / name), str(dest / name))
    return dest


def _plan_state(run_dir: Path, plan: Plan, force: bool) -> dict[str, Any]:
    """The sweep id and plan of this run directory; refuses to resume a sweep whose plan changed."""
    path = RunDir(run_dir).plan_file
    fingerprint = plan.fingerprint()
    started = (run_dir / TUNE_DIR).exists() or RunDir(run_dir).has_trials()
    if path.exists() and not force:
        state = json.loads(path.read_text())
        if state.get("fingerprint") != fingerprint and started:
            raise ConfigError(f"{run_dir}: this run was started with a different plan (cells, trials, seeds or "
                              "search space changed); pass --force to start over (the old run is kept under "
                              "previous/), or use another --storage")
        if state.get("fingerprint") == fingerprint:
            if "space" in state:
                return state
            # A plan.json written before the searched domains were recorded: add them, keep the sweep id.
            state["space"] = plan.searched_space()
            _write_json(path, state)
            return state
    state = {"sweep_id": uuid.uuid4().hex[:12], "fingerprint": fingerprint,
             "created_at": records.now_utc().isoformat(), "space": plan.searched_space()}
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(path, state)
    return state


def _write_json(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


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


def _connect(address: str | None, num_cpus: int | None, num_gpus: float | None, verbose: bool) -> bool:
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
              mlflow_uri: str | None = None, verbose: bool = False, resume_hint: str | None = None) -> SweepResult:
    """Run (or continue) the sweep of `spec` under `<storage>/<spec.name>/`. Validates everything it can
    before the first trial starts; see the module docstring for the behaviour."""
    storage = check_storage(storage)
    plan = build_plan(spec)
    check_paths(plan)
    trainable_path = trainable or spec.trainable
    fn = load_trainable(trainable_path)
    validate = trial_config_validator(trainable_path)
    if validate is not None:
        from benchmark.plan import search_space

        for c in plan.cells:
            sample = {p.name: p.example() for p in c.params}
            validate(search_space.apply_values(json.loads(json.dumps(c.config)), c.params, sample))
    run_dir = storage / spec.name
    uri = None
    if spec.tracking.mlflow:

        uri = mlflow_uri or spec.tracking.uri or default_uri(run_dir)
        check_uri(uri)
    result = SweepResult(run_dir=run_dir, planned=plan.total_trials)
    hint = resume_hint or f"tunevlseg run {spec.path or spec.name} --storage {storage}"

    existing = _read_existing(run_dir, plan)
    if not force and RunDir(run_dir).plan_file.exists() and _is_complete(plan, existing):
        _plan_state(run_dir, plan, force=False)  # a changed plan is still an error, not a silent no-op
        _summarise(result, plan, existing, spec)
        result.noop = True
        _say(f"nothing to do: all {plan.total_trials} trials of {spec.name} are recorded in {run_dir} "
             "(pass --force to run the sweep again)")
        return result
    _quiet_libraries(verbose)
    if address:
        # On a cluster, check every node before any trial starts: shared storage, the dataset roots, MLflow
        # reachable from the workers, the same package version (benchmark/sweep/preflight.py).
        from benchmark.sweep.preflight import require_preflight

        roots = {c.dataset: c.config["data"]["root"] for c in plan.cells if c.config["data"].get("root")}
        http = uri if uri and uri.startswith(("http://", "https://")) else None
        require_preflight(str(storage), roots, http, address)
    started_ray = _connect(address, num_cpus, num_gpus, verbose)
    try:
        return _sweep(spec, plan, fn, run_dir, uri, result, hint, force, verbose)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _sweep(spec: Spec, plan: Plan, fn: Callable, run_dir: Path, uri: str | None, result: SweepResult, hint: str,
           force: bool, verbose: bool) -> SweepResult:
    _check_cluster(plan, run_dir)
    if force and run_dir.exists():
        moved = _archive(run_dir)
        _say(f"--force: previous results moved to {moved}")
    state = _plan_state(run_dir, plan, force)

    from benchmark.sweep.tracking import MLflowCallback, MLflowMirror

    callbacks: list = [PrunedMarker(),
                       RecordsCallback(str(run_dir), spec.name, _cells_info(plan), dataclasses.asdict(spec.select))]
    mirror = None
    if uri is not None:
        artifacts = RunDir(run_dir).mlflow_artifacts.as_uri() if uri.startswith("sqlite") else None  # a server stores its own
        mirror = MLflowMirror(uri, spec.name, state["sweep_id"], {c.id: c.keys for c in plan.cells},
                              artifact_location=artifacts)
        mirror.ensure_experiment()  # create the DB in the driver, before any trial (migration races otherwise)
        callbacks.append(MLflowCallback(mirror))

    from ray import tune

    from benchmark.sweep.searcher import MultiCellSearcher

    try:
        wrapped = tune.with_resources(fn, trial_resources)
        exp_path = run_dir / TUNE_DIR
        if tune.Tuner.can_restore(str(exp_path)):
            _say(f"resuming the sweep in {exp_path}")
            tuner = tune.Tuner.restore(str(exp_path), trainable=wrapped, resume_errored=True)
        else:
            s = spec.search
            searcher = MultiCellSearcher(plan.cells, metric=s.metric, mode=s.mode, sampler=s.sampler,
                                         n_startup_trials=s.n_startup_trials, multivariate=s.multivariate,
                                         constant_liar=s.constant_liar,
                                         max_concurrent_per_cell=s.max_concurrent_per_cell, run_dir=str(run_dir),
                                         select=spec.select)
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
        grid = tuner.fit()
        known = _known_trial_ids(grid)
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
    if mirror is not None and known is not None:
        mirror.finalize(known, {cid: {"done": info["done"] >= info["planned"], "trials_done": info["done"],
                                      "best": info["best"], "started": info["done"] > 0}
                                for cid, info in result.cells.items()})
    _print_summary(result, spec)
    if result.interrupted:
        _say(f"stopped before the end ({result.done}/{result.planned} trials); resume with: {hint}")
    return result


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
    _say(f"{result.done}/{result.planned} trials recorded, {result.failed} failed -> {result.run_dir}")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else "-"
