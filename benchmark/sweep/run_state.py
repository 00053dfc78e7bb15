"""A run directory's plan.json as the sweep keeps it: the sweep id, the plan fingerprint (a resume with a
changed plan is refused, naming every changed setting), where the run was driven from, with which MLflow
and Optuna storage; and `--force`, which moves the old run under previous/.

    state = plan_state(run_dir, plan, force=False)     # new, or the recorded one when the plan is the same
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from benchmark.plan.matrix import Plan
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
)
from benchmark.sweep.storage import default_uri
from trainables.config import ConfigError


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


def plan_state(run_dir: Path, plan: Plan, force: bool) -> dict[str, Any]:
    """The sweep id and plan of this run directory; refuses to resume a sweep whose plan changed, naming
    every changed setting. Records where the run directory is (`run_dir`), so a moved run is noticed."""
    path = RunDir(run_dir).plan_file
    fingerprint = plan.fingerprint()
    started = (run_dir / TUNE_DIR).exists() or RunDir(run_dir).has_trials()
    if path.exists() and not force:
        state = RunDir(run_dir).plan_state()
        if state.get("run_format") != RUN_FORMAT:  # an older run, resumed (and from now on written) by this one
            state.update(run_format=RUN_FORMAT, written_by=_version())
            RunDir(run_dir).write_plan_state(state)
        old = state.get("fingerprint") or {}
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
                RunDir(run_dir).write_plan_state(state)
            return state
    state = {"sweep_id": uuid.uuid4().hex[:12], "run_format": RUN_FORMAT, "written_by": _version(),
             "fingerprint": fingerprint,
             "created_at": records.now_utc().isoformat(), "run_dir": str(run_dir.resolve()),
             "space": plan.searched_space()}
    run_dir.mkdir(parents=True, exist_ok=True)
    RunDir(run_dir).write_plan_state(state)
    return state


def recorded(run_dir: Path) -> dict[str, Any]:
    """plan.json of an existing run (empty for a new or unreadable one: the sweep's own checks say why)."""
    try:
        return RunDir(run_dir).plan_state() if RunDir(run_dir).plan_file.is_file() else {}
    except ConfigError:
        return {}


def recorded_uri(run_dir: Path) -> str | None:
    """The MLflow tracking URI the run was last driven with, when it was not the run's own mlflow.db."""
    return (recorded(run_dir).get("mlflow") or {}).get("uri")


def _version() -> str:
    from trainables.resources import version

    return version()


def note_mirror(run_dir: Path, state: dict[str, Any], mirror) -> None:
    """What `tunevlseg mlflow sync` needs to create runs exactly as this driver's mirror does, beyond the
    fingerprint (which holds the cells' params): the spec's description and the system tags."""
    want = {"description": mirror.description, "tags": dict(mirror.tags),
            "uri": None if mirror.uri == default_uri(run_dir) else mirror.uri}  # None: the run's own mlflow.db
    if state.get("mlflow") != want:
        state["mlflow"] = want
        RunDir(run_dir).write_plan_state(state)

def note_optuna(run_dir: Path, state: dict[str, Any], url: str | None) -> None:
    """Where the studies are: a resume without --optuna-storage keeps the recorded one."""
    if state.get("optuna_storage") != url:
        state["optuna_storage"] = url
        RunDir(run_dir).write_plan_state(state)


def archive(run_dir: Path, uri: str | None, experiment: str) -> Path:
    """`--force`: the old run goes to previous/<timestamp>/, its MLflow runs with it. The run directory's
    own MLflow store moves along (its artifact paths re-pointed there), so the new sweep's runs never share
    names with the old ones; on a server the old sweep's runs are ended and deleted (MLflow's trash:
    restorable), so none stays RUNNING or doubles a name in the experiment's view."""
    dest = RunDir(run_dir).previous_dir / time.strftime("%Y%m%d-%H%M%S")
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
        from benchmark.mlflow_mirror.paths import repoint

        repoint(dest)
    elif not local and old_sweep:
        _retire_sweep_runs(uri, experiment, old_sweep)
    return dest


def _retire_sweep_runs(uri: str, experiment: str, sweep_id: str) -> None:
    from benchmark.mlflow_mirror.tracking import MLflowMirror

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
