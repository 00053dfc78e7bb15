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
  copied run directory is re-pointed on restore (benchmark/sweep/relocation.py); SIGTERM stops like Ctrl-C
  (benchmark/sweep/ray_session.py).
Everything is addressed by absolute paths: trials run in temporary working directories.

Where the rest lives: plan.json and `--force` in run_state.py, the Tune callbacks that write the rows in
records_callback.py, Ray and the cluster check in ray_session.py, the closing table in summary.py.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from benchmark.plan.matrix import Plan, build_plan, check_paths
from benchmark.plan.spec import Spec
from benchmark.results.run_dir import TUNE_DIR, RunDir
from benchmark.sweep import reseed
from benchmark.sweep.failures import find_cause, storage_errors_in_one_line
from benchmark.sweep.lock import RunLock
from benchmark.sweep.progress import say
from benchmark.sweep.ray_session import check_cluster, quiet_libraries, ray_session, sigterm_stops_tune
from benchmark.sweep.records_callback import PrunedMarker, RecordsCallback
from benchmark.sweep.relocation import note_location, repoint_restored, repoint_store
from benchmark.sweep.run_state import archive, note_mirror, note_optuna, plan_state, recorded, recorded_uri
from benchmark.sweep.snapshots import RestoreLost, SnapshotError, restorable, retry_failed_trials
from benchmark.sweep.storage import check_free_space, check_storage, check_uri, default_uri
from benchmark.sweep.summary import SweepResult, print_summary, summarise
from trainables.config import ConfigError
from trainables.protocol import STATUS_ERROR
from trainables.registry import UnknownNameError

# The callbacks lived here before the split: the tuner.pkl of a run started then names them in this module.
__all__ = ["PrunedMarker", "RecordsCallback", "SweepResult", "run_sweep", "recorded_uri", "trial_resources",
           "trial_name", "trial_dirname", "load_trainable"]


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


# ---- the sweep -------------------------------------------------------------------------------------------


def _cells_info(plan: Plan) -> dict[str, dict[str, Any]]:
    return {c.id: {"keys": c.keys, "planned": c.trials + c.reseeds} for c in plan.cells}


def _read_existing(run_dir: Path, plan: Plan) -> dict[str, dict[str, dict]]:
    rows = RunDir(run_dir).rows()
    return {c.id: rows[c.id] for c in plan.cells if c.id in rows}


def _is_complete(plan: Plan, rows: dict[str, dict[str, dict]]) -> bool:
    return all(len(rows.get(c.id, {})) >= reseed.expected(c, rows.get(c.id, {}), plan.spec.select)
               and all(r["status"] != STATUS_ERROR for r in rows[c.id].values()) for c in plan.cells)


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

    optuna_url = optuna_storage or spec.search.storage or recorded(run_dir).get("optuna_storage")
    check_url(optuna_url)
    result = SweepResult(run_dir=run_dir, planned=plan.total_trials)
    hint = resume_hint or f"tunevlseg run {spec.path or spec.name} --storage {storage}"
    # One driver per run directory (a second one would treat the first one's trials as orphans), taken
    # before anything is written; creating the lock file is also the check that the storage is writable.
    lock = RunLock(run_dir, command=hint).acquire()
    if lock.took_over:
        say(f"took over {lock.path} from a dead driver (pid {lock.took_over.get('pid')} on "
            f"{lock.took_over.get('host')}: {lock.took_over['reason']})")
    try:
        check_free_space(run_dir)
        return storage_errors_in_one_line(hint, _run_locked, spec, plan, fn, run_dir, uri, result, hint, storage,
                                          force=force, address=address, num_cpus=num_cpus, num_gpus=num_gpus,
                                          verbose=verbose, callbacks=list(callbacks), optuna_url=optuna_url,
                                          retry_failed=retry_failed)
    finally:
        lock.release()


def _run_locked(spec: Spec, plan: Plan, fn: Callable, run_dir: Path, uri: str | None, result: SweepResult, hint: str,
                storage: Path, *, force: bool, address: str | None, num_cpus: int | None, num_gpus: float | None,
                verbose: bool, callbacks: list, optuna_url: str | None, retry_failed: bool = False) -> SweepResult:
    existing = _read_existing(run_dir, plan)
    if not force and RunDir(run_dir).plan_file.exists() and _is_complete(plan, existing):
        plan_state(run_dir, plan, force=False)  # a changed plan is still an error, not a silent no-op
        summarise(result, plan, existing, spec)
        result.noop = True
        say(f"nothing to do: all {plan.total_trials} trials of {spec.name} are recorded in {run_dir} "
            "(pass --force to run the sweep again)")
        return result
    if not force:
        plan_state(run_dir, plan, force=False)  # a changed plan is refused before Ray starts
    quiet_libraries(verbose)
    if address:
        # On a cluster, check every node before any trial starts: shared storage, the dataset roots, MLflow
        # reachable from the workers, the same package version (benchmark/sweep/preflight.py).
        from benchmark.sweep.preflight import require_preflight

        roots = {c.dataset: c.config["data"]["root"] for c in plan.cells if c.config["data"].get("root")}
        http = uri if uri and uri.startswith(("http://", "https://")) else None
        require_preflight(str(storage), roots, http, address)
    with ray_session(address, num_cpus, num_gpus, verbose):
        return _sweep(spec, plan, fn, run_dir, uri, result, hint, force, verbose, callbacks, optuna_url,
                      retry_failed=retry_failed)


def _sweep(spec: Spec, plan: Plan, fn: Callable, run_dir: Path, uri: str | None, result: SweepResult, hint: str,
           force: bool, verbose: bool, extra_callbacks: list | None = None,
           optuna_url: str | None = None, retry_failed: bool = False) -> SweepResult:
    check_cluster(plan, run_dir)
    if force and run_dir.exists():
        moved = archive(run_dir, uri, spec.name)
        say(f"--force: previous results moved to {moved}")
    exp_path = run_dir / TUNE_DIR
    existing = _read_existing(run_dir, plan)
    expect = restorable(exp_path, run_dir, sum(len(cell) for cell in existing.values()), hint)  # before any write
    if retry_failed:
        retry_failed_trials(exp_path, {tid for cell in existing.values() for tid, r in cell.items()
                                       if r["status"] == STATUS_ERROR}, expect)
    state = plan_state(run_dir, plan, force)
    moved_from = note_location(run_dir, state)
    note_optuna(run_dir, state, optuna_url)

    callbacks, mirror = _callbacks(spec, plan, run_dir, uri, state, hint, expect, optuna_url)
    callbacks += extra_callbacks or []

    from ray import tune

    try:
        wrapped = tune.with_resources(fn, trial_resources)
        if expect is not None:
            say(f"resuming the sweep in {exp_path}")
            tuner = tune.Tuner.restore(str(exp_path), trainable=wrapped, resume_errored=True)
            repoint_restored(tuner, callbacks, run_dir, moved_from, spec.select, optuna_url)
        else:
            tuner = _new_tuner(spec, plan, wrapped, run_dir, callbacks, optuna_url, verbose)
        with sigterm_stops_tune() as terminated:
            try:
                grid = tuner.fit()
            except Exception as e:  # noqa: BLE001 - only our own refusal is turned into one line
                lost = find_cause(e, RestoreLost)
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
        summarise(result, plan, rows, spec)
        result.interrupted = True
        say(f"interrupted; resume with: {hint}")
        return result

    rows = _read_existing(run_dir, plan)
    if known is not None:  # the same orphan rule as the callback, in case no step ran after a restore
        rows = RunDir(run_dir).drop_orphans(rows, known)
    RunDir(run_dir).write_selected(_cells_info(plan), rows, spec.select)
    summarise(result, plan, rows, spec)
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
    print_summary(result, spec)
    _say_how_it_ended(result, run_dir, mirror, hint)
    return result


def _callbacks(spec: Spec, plan: Plan, run_dir: Path, uri: str | None, state: dict[str, Any], hint: str,
               expect: frozenset[str] | None, optuna_url: str | None) -> tuple[list, Any]:
    """The driver's Tune callbacks, in order (the run directory's, the rows', the checkpoints', then the MLflow
    mirror's and the studies' links when MLflow is on), and the mirror (None without MLflow)."""
    from benchmark.mlflow_mirror.tracking import MLflowCallback, MLflowMirror, cell_params, system_tags
    from benchmark.sweep.checkpoints import KeepFinalCheckpoint
    from benchmark.sweep.in_place import RestoredInPlace

    records_cb = RecordsCallback(str(run_dir), spec.name, _cells_info(plan), dataclasses.asdict(spec.select),
                                 expect_trials=expect)
    callbacks: list = [RestoredInPlace(str(run_dir), hint), PrunedMarker(), records_cb, KeepFinalCheckpoint()]
    mirror = None
    if uri is not None:
        artifacts = RunDir(run_dir).mlflow_artifacts.as_uri() if uri.startswith("sqlite") else None  # a server stores its own
        if uri == default_uri(run_dir):  # a run directory copied or moved elsewhere: re-point its artifact paths
            repoint_store(run_dir)
        mirror = MLflowMirror(uri, spec.name, state["sweep_id"], {c.id: c.keys for c in plan.cells},
                              artifact_location=artifacts, description=spec.description,
                              params={c.id: cell_params(c) for c in plan.cells},
                              tags=system_tags(f"tunevlseg run {spec.path or spec.name}"))
        mirror.sync_hint = f"tunevlseg mlflow sync {run_dir}"
        note_mirror(run_dir, state, mirror)
        # Create the DB in the driver, before any trial (migration races otherwise); an unreachable server
        # turns the mirror off with one warning instead of stopping the sweep.
        if mirror.connect() is not None:
            from benchmark.mlflow_mirror.backfill import backfill

            backfill(run_dir, mirror, quiet=True)  # rows a dead server (or a killed driver) left out
        callbacks.append(MLflowCallback(mirror))
        from benchmark.sweep.studies import StudyLinks, StudyStore

        callbacks.append(StudyLinks(StudyStore(run_dir, optuna_url), mirror))
    return callbacks, mirror


def _new_tuner(spec: Spec, plan: Plan, wrapped, run_dir: Path, callbacks: list, optuna_url: str | None,
               verbose: bool):
    """A new experiment: one Tuner over every cell, with the per-cell searcher and (optionally) ASHA."""
    from ray import tune

    from benchmark.sweep.searcher import MultiCellSearcher

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
    return tune.Tuner(
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


def _say_how_it_ended(result: SweepResult, run_dir: Path, mirror, hint: str) -> None:
    if mirror is not None and not mirror.disabled:
        say(f"MLflow: {mirror.uri} (make mlflow-ui RUN={run_dir}, then open {mirror.ui_link()})")
    if result.terminated:
        say(f"terminated (SIGTERM) with {result.done}/{result.planned} trials; the state is saved; resume with: {hint}")
    elif result.interrupted:
        say(f"stopped before the end ({result.done}/{result.planned} trials); resume with: {hint}")
    elif result.stalled:
        short = [cid for cid, info in result.cells.items() if info["done"] < info["planned"]]
        say(f"the sweep ended with {result.done}/{result.planned} trials: the searcher scheduled no more trials for "
            f"{', '.join(short[:5])}{' ...' if len(short) > 5 else ''}; rerunning will not change that (a bug: "
            f"please report it with {run_dir / TUNE_DIR})")


def _unfinished(grid) -> int | None:
    """Trials Tune still had pending or running when `fit` returned (after Ctrl-C: the saved ones)."""
    analysis = getattr(grid, "_experiment_analysis", None)
    trials = getattr(analysis, "trials", None)
    if trials is None:
        return None
    return sum(t.status not in ("TERMINATED", "ERROR") for t in trials)


def _known_trial_ids(grid) -> set[str] | None:
    analysis = getattr(grid, "_experiment_analysis", None)
    trials = getattr(analysis, "trials", None)
    return None if trials is None else {t.trial_id for t in trials}
