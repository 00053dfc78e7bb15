"""Fill the MLflow mirror from Parquet (`tunevlseg mlflow sync RUN`, and at every sweep start).

MLflow is a mirror: when the tracking server is down the sweep goes on without it (benchmark/mlflow_mirror/tracking.py
turns the mirror off after the first failure). Afterwards every trial row in `trials/*.parquet` is mirrored
again: a trial whose MLflow run is missing gets one (params from the trial's `params.json` in the Tune
directory, per-epoch metrics from its `result.json`, final metrics, status and error from its row, the
tuned-prompt artifact from its last checkpoint), a run left RUNNING or with another status is ended the
way the row says. Idempotent: a trial's run is found by its `trial_id` tag, so a second sync changes
nothing. Cells get their parent run with the selected trial.

Runs are written by the live mirror's own methods (`MLflowMirror.start_trial`, `log_result`, `end_trial`,
`record_cell`), so a backfilled run has what a live one has: the system tags and the spec's description the
last driver recorded in plan.json, the cell's params from the plan fingerprint, one value per metric and
epoch, the tuned-prompt artifact and preview.png, `selected_*` metrics on the cell's parent run. A moved or
copied run directory's local store is re-pointed first (benchmark/mlflow_mirror/paths.py).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from benchmark.results.run_dir import RunDir, is_reseed, select
from benchmark.sweep import reseed
from trainables.config import ConfigError
from trainables.protocol import CHECKPOINT_ARTIFACT, STATUS_ERROR

logger = logging.getLogger("tunevlseg.tracking")

_FINAL = ("objective", "val_loss", "best_val_dice", "test_dice", "test_iou", "test_dice_orig", "test_iou_orig",
          "best_epoch", "epochs_run", "trainable_params", "seconds", "peak_gpu_mem_mb")


def _trial_dirs(run_dir: RunDir) -> dict[str, Path]:
    out = {}
    if run_dir.tune_dir.is_dir():
        for d in run_dir.tune_dir.iterdir():
            if d.is_dir() and "_" in d.name:
                out[d.name.rsplit("_", 1)[1]] = d
    return out


def _config_of(row: dict[str, Any], trial_dir: Path | None) -> dict[str, Any]:
    if trial_dir is not None and (trial_dir / "params.json").is_file():
        try:
            return json.loads((trial_dir / "params.json").read_text())
        except ValueError:
            pass
    hp = {k[3:]: v for k, v in row.items() if k.startswith("hp_") and v is not None}
    config = {"cell_id": row["cell_id"], "trial_index": row["trial_index"], "hp": hp}
    if row.get("seed") is not None and row["seed"] == row["seed"]:  # the training seed the row records
        config["trial"] = {"train": {"seed": int(row["seed"])}}
    if is_reseed(row):  # a rerun over seeds keeps its `reseed`/`reseed_of` tags without its params.json
        of = row.get("reseed_of")
        config["reseed"] = {"k": int(row["reseed"]), "of": None if of is None or of != of else int(of),
                            "seed": row.get("seed")}
    return config


def _history(trial_dir: Path | None) -> list[dict[str, Any]]:
    if trial_dir is None or not (trial_dir / "result.json").is_file():
        return []
    out = []
    for line in (trial_dir / "result.json").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a kill
    return out


def _artifact(trial_dir: Path | None) -> str | None:
    if trial_dir is None:
        return None
    found = sorted(trial_dir.glob(f"checkpoint_*/{CHECKPOINT_ARTIFACT}"))
    return str(found[-1]) if found else None


def _replay(mirror, run_id: str, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """The run's metrics through the live mirror's `log_result` (step = epoch, one value per key and step);
    without a result.json (deleted, or never written), the row's final metrics at step 0."""
    for result in history:
        mirror.log_result(run_id, result)
    if not history:
        ts = row["finished_at"].timestamp() if row.get("finished_at") is not None else 0
        mirror.log_result(run_id, {**{k: row[k] for k in _FINAL if _finite(row.get(k))}, "timestamp": ts})


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def backfill(run_dir: str | Path, mirror, quiet: bool = False) -> dict[str, int]:
    """Mirror every Parquet row of `run_dir` through `mirror` (a tracking.MLflowMirror). Returns counts
    {"created", "ended", "unchanged"}. With `quiet`, a failure turns the mirror off (one warning) instead of
    raising (the sweep's own start)."""
    try:
        return _backfill(RunDir(run_dir), mirror)
    except Exception as e:  # noqa: BLE001
        if not quiet:
            raise
        mirror.disable("backfill", e)
        return {"created": 0, "ended": 0, "unchanged": 0}


def _backfill(rd: RunDir, mirror) -> dict[str, int]:
    counts = {"created": 0, "ended": 0, "unchanged": 0}
    rows = rd.all_rows()
    if not rows:
        return counts
    runs = {r.data.tags.get("trial_id"): r for r in mirror.trial_runs()}
    dirs = _trial_dirs(rd)
    for row in sorted(rows, key=lambda r: (r["cell_id"], r["trial_index"])):
        tid = row["trial_id"]
        run = runs.get(tid)
        want = "FAILED" if row["status"] == STATUS_ERROR else "FINISHED"
        if run is not None and run.info.status == want and run.data.tags.get("status") == row["status"]:
            counts["unchanged"] += 1
            continue
        trial_dir = dirs.get(tid)
        if row["cell_id"] not in mirror.cells:
            mirror.cells[row["cell_id"]] = {k: row[k] for k in ("vlsm", "learner", "dataset", "variant")}
        run_id = mirror.start_trial(tid, f"{row['cell_id']}#{row['trial_index']}", _config_of(row, trial_dir))
        if run is None:
            _replay(mirror, run_id, row, _history(trial_dir))
            counts["created"] += 1
        else:
            counts["ended"] += 1
        mirror.end_trial(run_id, row["status"], row.get("error") or None, _artifact(trial_dir))
    _parents(rd, mirror, rows)
    return counts


def _planned(rd: RunDir) -> dict[str, SimpleNamespace]:
    """Each planned cell's searched trials and reruns over seeds, in plan order (plan.json's fingerprint)."""
    if not rd.plan_file.is_file():
        return {}
    cells = rd.plan_state().get("fingerprint", {}).get("cells", {})
    return {cid: SimpleNamespace(trials=c.get("trials"), reseeds=c.get("reseeds", 0))
            for cid, c in cells.items() if c.get("trials") is not None}


def _parents(rd: RunDir, mirror, rows: list[dict[str, Any]]) -> None:
    planned = _planned(rd)
    rule = rd.selection()
    by_cell: dict[str, list[dict]] = {}
    for r in rows:
        by_cell.setdefault(r["cell_id"], []).append(r)
    for cid, cell_rows in by_cell.items():
        run_id = mirror.record_cell(cid, select(cell_rows, rule), len(cell_rows))
        # as the live driver counts: the search's trials plus its reruns over seeds (none without a selection)
        done = cid in planned and len(cell_rows) >= reseed.expected(planned[cid], cell_rows, rule)
        run = mirror.client.get_run(run_id)
        if run.info.status == "RUNNING" or (done and run.info.status != "FINISHED"):
            mirror.client.set_terminated(run_id, "FINISHED" if done else "KILLED")


def sync(run_dir: str | Path, uri: str | None = None) -> dict[str, int]:
    """`tunevlseg mlflow sync RUN`: holds the run directory's driver lock (no sweep may run meanwhile)."""
    from benchmark.sweep.lock import RunLock
    from benchmark.sweep.storage import check_uri, default_uri

    rd = RunDir(run_dir)
    if not rd.plan_file.is_file():
        raise FileNotFoundError(f"{rd.plan_file} not found: {rd.path} is not a run directory of `tunevlseg run`")
    state = rd.plan_state()
    spec = (state.get("fingerprint") or {}).get("spec") or rd.path.name
    # The server the sweep mirrored into (plan.json, written by the driver): the hint a dead server prints
    # names no URI, and a new local mlflow.db would "succeed" in the wrong place.
    uri = uri or (state.get("mlflow") or {}).get("uri") or default_uri(rd.path)
    check_uri(uri)
    with RunLock(rd.path, command=f"tunevlseg mlflow sync {rd.path}"):
        artifacts = rd.mlflow_artifacts.resolve().as_uri() if uri.startswith("sqlite") else None
        if uri == default_uri(rd.path):  # moved or copied: the store's artifact paths follow it
            from benchmark.sweep.relocation import repoint_store

            repoint_store(rd.path)
        mirror = _mirror(rd, state, spec, uri, artifacts)
        try:
            mirror.ensure_experiment()
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"MLflow at {uri} is not reachable ({type(e).__name__}: "
                              f"{(str(e).splitlines() or [''])[0][:160]}); start the server and run this again") from None
        counts = _backfill(rd, mirror)
        _record_sweep(rd, mirror)
        return counts


def _record_sweep(rd: RunDir, mirror) -> None:
    """The sweep run's summary metrics and status, as the live driver ends a sweep (`MLflowMirror.finalize`):
    per planned cell, in plan order, its trials planned (with reruns over seeds), done and failed, and its
    selected trial."""
    rule = rd.selection()
    rows = rd.rows()
    states = {}
    for cid, cell in _planned(rd).items():
        cell_rows = list(rows.get(cid, {}).values())
        if cell_rows and cid not in mirror.cells:  # the variant of its mean_selected_* metrics
            mirror.cells[cid] = {k: cell_rows[0][k] for k in ("vlsm", "learner", "dataset", "variant")}
        planned = reseed.expected(cell, cell_rows, rule)
        states[cid] = {"done": len(cell_rows) >= planned, "trials_done": len(cell_rows), "planned": planned,
                       "failed": sum(r["status"] == STATUS_ERROR for r in cell_rows), "best": select(cell_rows, rule)}
    mirror.record_sweep(states)


def _mirror(rd: RunDir, state: dict[str, Any], spec: str, uri: str, artifacts: str | None):
    """The mirror the sweep's driver had: its description and system tags (plan.json `mlflow`, written by
    the driver; a run from before that gets this process's tags) and each cell's params and keys (the
    fingerprint)."""
    from benchmark.mlflow_mirror.tags import cell_params_from_plan, system_tags
    from benchmark.mlflow_mirror.tracking import MLflowMirror

    cells = (state.get("fingerprint") or {}).get("cells") or {}
    params = {cid: cell_params_from_plan(c) for cid, c in cells.items() if "config" in c}
    recorded = state.get("mlflow") or {}
    mirror = MLflowMirror(uri, spec, state["sweep_id"], {}, artifact_location=artifacts,
                          description=recorded.get("description", ""), params=params,
                          tags=recorded.get("tags") or system_tags(f"tunevlseg run {spec}"))
    mirror.sync_hint = f"tunevlseg mlflow sync {rd.path}"
    return mirror
