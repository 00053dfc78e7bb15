"""A resume under other package versions than the run's trials recorded names each package that differs
(benchmark/sweep/versions.py; called from the coordinator's plan check on resume)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from benchmark.results import records as R
from benchmark.results.run_dir import RunDir
from benchmark.sweep import versions as V

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def _write(run, versions_by_trial):
    cell = dict(vlsm="clipseg", learner="coop", dataset="mini_polyp", variant="default")
    rows = [R.trial_row(spec="mini", cell=cell, cell_id="clipseg_coop_mini-polyp", trial_index=i, trial_id=f"t{i}",
                        hp={"lr": 1e-3}, result={"objective": 0.5, "test_dice": 0.5, "status": "ok"}, error=None,
                        prov={"git_sha": "x", "git_dirty": False, "versions": json.dumps(v)},
                        started_at=T0, finished_at=T0 + timedelta(minutes=i))
            for i, v in enumerate(versions_by_trial)]
    RunDir(run).write_cell("clipseg_coop_mini-polyp", rows)


def test_names_every_package_that_differs_from_the_last_trial(tmp_path, capsys):
    _write(tmp_path, [{"torch": "2.12.0", "optuna": "5.0.0"},
                      {"torch": "2.13.0", "optuna": "5.0.0", "transformers": "5.23.0"}])
    changes = V.warn_on_drift(tmp_path, {"torch": "2.13.0", "optuna": "5.1.0", "mlflow": "3.17.0"})
    assert changes == ["mlflow (none) -> 3.17.0", "optuna 5.0.0 -> 5.1.0", "transformers 5.23.0 -> (none)"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "optuna 5.0.0 -> 5.1.0" in err and "make install" in err


def test_same_versions_or_no_record_stay_quiet(tmp_path, capsys):
    assert V.warn_on_drift(tmp_path / "empty", {"torch": "2.13.0"}) == []
    _write(tmp_path, [{"torch": "2.13.0"}])
    assert V.warn_on_drift(tmp_path, {"torch": "2.13.0"}) == []
    assert capsys.readouterr().err == ""


def test_the_current_environment_matches_what_provenance_records(tmp_path):
    """Without an explicit environment the check reads the same versions a new trial row would record."""
    _write(tmp_path, [json.loads(R.provenance()["versions"])])
    assert V.warn_on_drift(tmp_path) == []


def test_resuming_a_sweep_warns_about_the_drift(tmp_path, capsys):
    """The coordinator's plan check on resume (same plan, trials present) runs the version check."""
    from pathlib import Path

    from benchmark.plan.matrix import build_plan
    from benchmark.plan.spec import load_spec
    from benchmark.sweep.run_state import plan_state

    smoke = Path(__file__).resolve().parents[3] / "experiments" / "smoke.yaml"
    run_dir = tmp_path / "smoke"
    plan_state(run_dir, build_plan(load_spec(smoke)), force=False)
    current = json.loads(R.provenance()["versions"])
    _write(run_dir, [dict(current, optuna="0.0.1")])
    capsys.readouterr()
    plan_state(run_dir, build_plan(load_spec(smoke)), force=False)
    err = capsys.readouterr().err
    assert f"optuna 0.0.1 -> {current['optuna']}" in err
