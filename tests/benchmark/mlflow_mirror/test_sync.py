"""`tunevlseg mlflow sync RUN` rebuilds the sweep-level run as the live sweep ends it: its summary metrics
(trials and cells planned/done/failed, mean selected scores per variant) and its status."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from benchmark.plan.matrix import build_plan
from benchmark.plan.spec import load_spec
from benchmark.results import records
from benchmark.results.run_dir import RunDir
from benchmark.sweep.run_state import plan_state

SMOKE = Path(__file__).resolve().parents[3] / "experiments" / "smoke.yaml"


def _run_dir(tmp_path: Path, objectives: dict[str, list[float | None]]) -> Path:
    """A finished (or partial) smoke run without Ray: plan.json, the cells' rows, selected.parquet.
    `objectives[cell]`: one trial per value, None for a failed trial."""
    plan = build_plan(load_spec(SMOKE))
    run_dir = tmp_path / "smoke"
    plan_state(run_dir, plan, force=False)
    rd = RunDir(run_dir)
    t = datetime(2026, 12, 3, tzinfo=timezone.utc)
    cells, rows = {}, {}
    for c in plan.cells:
        cells[c.id] = {"keys": c.keys, "planned": c.trials}
        rows[c.id] = {}
        for i, obj in enumerate(objectives.get(c.id, [])):
            result = None if obj is None else {"objective": obj, "val_loss": obj, "test_dice": 1 - obj, "status": "ok"}
            row = records.trial_row(spec="smoke", cell=c.keys, cell_id=c.id, trial_index=i, trial_id=f"{c.id}-{i}",
                                    hp={"lr": 1e-3}, result=result, error="boom" if obj is None else None, prov={},
                                    started_at=t, finished_at=t, seed=c.seed)
            rows[c.id][row["trial_id"]] = row
        if rows[c.id]:
            rd.write_cell(c.id, rows[c.id].values())
    rd.write_selected(cells, rows, plan.spec.select)
    return run_dir


def _sweep_run(run_dir: Path):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id], "tags.`tunevlseg.role` = 'sweep'")
    assert len(runs) == 1
    return runs[0]


def test_sync_writes_the_sweep_runs_summary_metrics(tmp_path):
    from benchmark.mlflow_mirror.backfill import sync

    run_dir = _run_dir(tmp_path, {"clipseg_coop_kvasir": [0.5, 0.25, 0.75, 0.4],
                                  "clipseg_maple_kvasir": [0.3, None]})
    sync(run_dir)
    run = _sweep_run(run_dir)
    assert run.data.metrics == {"trials_planned": 8, "trials_done": 6, "trials_failed": 1, "cells_planned": 2,
                                "cells_done": 1, "mean_selected_objective.default": (0.25 + 0.3) / 2,
                                "mean_selected_test_dice.default": (0.75 + 0.7) / 2}
    assert run.info.status == "KILLED"  # as the live driver ends a sweep short of its plan


def test_a_later_sync_or_resume_updates_the_summary_and_the_selected_metrics(tmp_path):
    """Summary metrics are logged at step 0 each time a driver (or sync) ends; the later value must be the one
    MLflow shows, also when it is smaller (fewer failures, a better selected objective)."""
    from benchmark.mlflow_mirror.backfill import sync

    sync(_run_dir(tmp_path, {"clipseg_coop_kvasir": [0.5, 0.25, 0.75, 0.4], "clipseg_maple_kvasir": [0.3, None]}))
    run_dir = _run_dir(tmp_path, {"clipseg_coop_kvasir": [0.5, 0.25, 0.75, 0.4],
                                  "clipseg_maple_kvasir": [0.3, 0.2, 0.6, 0.9]})
    sync(run_dir)
    run = _sweep_run(run_dir)
    assert run.data.metrics["trials_done"] == 8 and run.data.metrics["cells_done"] == 2
    assert run.data.metrics["trials_failed"] == 0
    assert run.data.metrics["mean_selected_objective.default"] == (0.25 + 0.2) / 2
    assert run.info.status == "FINISHED"
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    maple = client.search_runs([run.info.experiment_id], "tags.`cell_id` = 'clipseg_maple_kvasir' and "
                                                         "tags.`tunevlseg.role` = 'cell'")
    assert maple[0].data.metrics["selected_objective"] == 0.2
