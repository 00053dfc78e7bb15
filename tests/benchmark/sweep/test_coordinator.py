"""The coordinator end to end with the synthetic trainable: Parquet rows, Optuna studies, MLflow mirror,
failures, resume after SIGKILL, and the errors that must come before any trial starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import mlflow_runs as _mlflow_runs
from helpers import spec_file as _spec_file

from benchmark import cli
from benchmark.plan.spec import load_spec
from benchmark.results import records
from benchmark.results.run_dir import RunDir
from benchmark.sweep.coordinator import run_sweep
from trainables.config import ConfigError

REPO = Path(__file__).resolve().parents[3]
SMOKE = REPO / "experiments" / "smoke.yaml"


def _check_complete_sweep(run_dir: Path) -> None:
    """2 cells x 4 trials: 8 rows, each cell's study 4 trials, 8 MLflow trial runs, none RUNNING."""
    from benchmark.sweep.searcher import load_studies

    df = RunDir(run_dir).frame()
    assert len(df) == 8
    assert df["trial_id"].is_unique
    assert not df.duplicated(["cell_id", "trial_index"]).any()
    assert sorted(df.groupby("cell_id")["trial_index"].apply(sorted).tolist()) == [[0, 1, 2, 3]] * 2
    studies = load_studies(str(run_dir / "tune"))
    assert sorted(studies) == ["clipseg_coop_kvasir", "clipseg_maple_kvasir"]
    for cid, study in studies.items():
        assert len(study.trials) == 4, cid
        assert all(t.state.name == "COMPLETE" for t in study.trials), [(t.number, t.state.name, t.params) for t in study.trials]
        # The study saw exactly the parameters recorded in Parquet.
        recorded = sorted(df[df.cell_id == cid]["hp_lr"].tolist())
        assert sorted(t.params["lr"] for t in study.trials) == pytest.approx(recorded)
    trials, cells = _mlflow_runs(run_dir)
    assert len(trials) == 8 and len(cells) == 2
    assert {r.info.status for r in trials} == {"FINISHED"}
    assert {r.info.status for r in cells} == {"FINISHED"}
    assert {r.data.tags["trial_id"] for r in trials} == set(df["trial_id"])
    parents = {r.info.run_id for r in cells}
    assert all(r.data.tags["mlflow.parentRunId"] in parents for r in trials)
    _check_stored_studies(run_dir, df, {r.data.tags["trial_id"]: r.info.run_id for r in trials})


def _check_stored_studies(run_dir: Path, df, mlflow_runs: dict[str, str]) -> None:
    """Optuna's own storage (<run dir>/optuna.db) holds each cell's study, as `optuna.load_study` reads it:
    exactly the recorded trials, none twice, each linked to its Ray trial, MLflow run and Dice scores."""
    import optuna

    url = f"sqlite:///{run_dir / 'optuna.db'}"
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(url))
    assert names == sorted(df["cell_id"].unique())
    for cid in names:
        study = optuna.load_study(study_name=cid, storage=url)
        rows = df[df.cell_id == cid]
        assert study.metric_names == ["objective"]
        assert study.user_attrs["cell_id"] == cid and study.user_attrs["learner"] in ("coop", "maple")
        trials = study.get_trials()
        assert [t.number for t in trials] == sorted(rows["trial_index"]), cid
        assert all(t.state.name == "COMPLETE" for t in trials), [(t.number, t.state.name) for t in trials]
        by_id = rows.set_index("trial_id")
        assert sorted(t.user_attrs["ray_trial_id"] for t in trials) == sorted(by_id.index)
        for t in trials:
            row = by_id.loc[t.user_attrs["ray_trial_id"]]
            assert t.user_attrs["trial_index"] == row["trial_index"] == t.number
            assert t.value == pytest.approx(row["objective"]) and t.params["lr"] == pytest.approx(row["hp_lr"])
            assert t.user_attrs["test_dice"] == pytest.approx(row["test_dice"])
            assert t.user_attrs["val_dice"] == pytest.approx(row["best_val_dice"])
            assert t.user_attrs["mlflow_run_id"] == mlflow_runs[t.user_attrs["ray_trial_id"]]


@pytest.mark.ray
def test_sweep_records_every_trial_and_reruns_as_noop(tmp_path, local_ray, capsys):
    spec = load_spec(SMOKE)
    result = run_sweep(spec, tmp_path / "runs")
    assert (result.planned, result.done, result.failed, result.exit_code) == (8, 8, 0, 0)
    run_dir = tmp_path / "runs" / "smoke"
    _check_complete_sweep(run_dir)

    df = RunDir(run_dir).frame()
    assert set(df["status"]) == {"ok"}
    assert df["objective"].notna().all() and df["test_dice"].between(0, 1).all()
    assert df["hp_prompt_depth"].between(1, 11).all()
    coop, maple = df[df.learner == "coop"], df[df.learner == "maple"]
    assert coop["hp_intermediate_dim"].isna().all() and maple["hp_intermediate_dim"].notna().all()
    assert (df["started_at"] <= df["finished_at"]).all() and df["git_sha"].str.len().gt(0).all()
    assert pq.read_schema(RunDir(run_dir).cell_file("clipseg_coop_kvasir")).equals(records.TRIAL_SCHEMA,
                                                                                   check_metadata=False)
    selected = pq.read_table(RunDir(run_dir).selected_file).to_pylist()
    for row in selected:  # the selected trial is the cell's best objective
        cell = df[df.cell_id == row["cell_id"]]
        assert row["objective"] == cell["objective"].min() and row["trials_done"] == 4
    out = capsys.readouterr().out
    assert "trials 8/8, cells 2/2 done" in out and "Trial status" not in out

    # MLflow holds per-epoch metric history and the cell tags.
    from mlflow.tracking import MlflowClient

    trials, _ = _mlflow_runs(run_dir)
    run = trials[0]
    assert {run.data.tags[k] for k in ("vlsm", "learner", "dataset")} <= {"clipseg", "coop", "maple", "kvasir"}
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    history = client.get_metric_history(run.info.run_id, "val_loss")
    # One report per epoch (the last one with the final result): steps 1-3, as Optuna's intermediate values.
    assert [m.step for m in history] == [1, 2, 3]
    for key in run.data.metrics:  # one value per metric and step
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)
    # What MLflow's users expect: a model-training experiment with the spec's description, the standard
    # system tags on every run, the cell's settings and search space as its parent run's params.
    exp = client.get_experiment_by_name("smoke")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.tags["mlflow.note.content"] == spec.description
    trials, cells = _mlflow_runs(run_dir)
    for r in trials + cells:
        assert r.data.tags["mlflow.source.type"] == "LOCAL" and r.data.tags["mlflow.user"]
        assert r.data.tags["mlflow.source.name"].startswith("tunevlseg run ")
        assert len(r.data.tags["mlflow.source.git.commit"]) == 40  # a checkout
    maple_cell = next(r for r in cells if r.data.tags["cell_id"] == "clipseg_maple_kvasir")
    assert maple_cell.data.params["train.max_epochs"] == "3" and maple_cell.data.params["trials"] == "4"
    assert maple_cell.data.params["search.lr"].endswith("log-uniform")
    assert "search.intermediate_dim" in maple_cell.data.params
    assert set(maple_cell.data.metrics) == {"selected_objective", "selected_test_dice", "selected_test_iou",
                                            "selected_val_dice", "selected_val_loss"}

    # Same command again: nothing runs, nothing changes.
    before = {p.name: p.stat().st_mtime_ns for p in RunDir(run_dir).trials_dir.iterdir()}
    again = run_sweep(spec, tmp_path / "runs")
    assert again.noop and again.exit_code == 0 and again.done == 8
    assert before == {p.name: p.stat().st_mtime_ns for p in RunDir(run_dir).trials_dir.iterdir()}


@pytest.mark.ray
def test_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, local_ray, capsys):
    path = _spec_file(tmp_path, fixed__fake={"epoch_seconds": 0.02, "fail_trials": [1], "fail_at_epoch": 1},
                      rules=[{"when": {"learner": "coop"}, "set": {"fake.fail_trials": []}}])
    code = cli.main(["run", str(path), "--storage", str(tmp_path / "runs")])
    assert code == 1
    run_dir = tmp_path / "runs" / "smoke"
    df = RunDir(run_dir).frame()
    assert len(df) == 8
    failed = df[df.status == "error"]
    assert list(failed["cell_id"]) == ["clipseg_maple_kvasir"] and list(failed["trial_index"]) == [1]
    assert "synthetic failure in clipseg_maple_kvasir trial 1 at epoch 1" in failed["error"].iloc[0]
    assert (df[df.status == "ok"]["error"].fillna("") == "").all()
    from benchmark.sweep.searcher import load_studies

    states = sorted(t.state.name for t in load_studies(str(run_dir / "tune"))["clipseg_maple_kvasir"].trials)
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"]
    trials, _ = _mlflow_runs(run_dir)
    bad = [r for r in trials if r.data.tags["trial_index"] == "1" and r.data.tags["cell_id"] == "clipseg_maple_kvasir"]
    assert bad[0].info.status == "FAILED" and "synthetic failure" in bad[0].data.tags["error"]
    assert sum(r.info.status == "RUNNING" for r in trials) == 0
    captured = capsys.readouterr()
    assert "ERROR: RuntimeError: synthetic failure" in captured.out
    assert "1 trial(s) failed" in captured.err


@pytest.mark.parametrize("changes, storage, error, match", [
    ({"axes__colour": "red"}, None, ConfigError, r"unknown key 'colour'; allowed: vlsm, learner"),
    ({"axes__learner": ["coop", "mapel"]}, None, Exception, r"unknown learner 'mapel' \(did you mean 'maple'\?\); allowed: "
     r"adapter, cocoop, coop"),
    ({"axes__pairs": [["cris", "vpt"]]}, None, ConfigError, r"\(cris, vpt\) is not viable"),
    ({"data": {"root": "/nonexistent/datasets"}}, None, FileNotFoundError,
     r"dataset root for 'kvasir' does not exist: /nonexistent/datasets/kvasir"),
    ({}, "relative/runs", ConfigError, r"storage 'relative/runs' is not absolute"),
    ({"resources": {"cpu": 1, "gpu": 0.5}}, None, ConfigError, None),  # checked below (needs Ray)
])
def test_invalid_spec_fails_before_any_trial(tmp_path, changes, storage, error, match, request):
    if "resources" in changes:
        request.getfixturevalue("local_ray")
        match = r"asks for 0.5 GPU per trial but the Ray cluster has no GPU"
    path = _spec_file(tmp_path, **changes)
    with pytest.raises(error, match=match):
        run_sweep(load_spec(path), storage or tmp_path / "runs")
    assert not (tmp_path / "runs" / "smoke" / "tune").exists()  # no Tune experiment was started


def test_cli_reports_a_bad_spec_in_one_line(tmp_path, capsys):
    path = _spec_file(tmp_path, search={"trails": 3})
    assert cli.main(["run", str(path), "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "search unknown key 'trails'" in err


def test_changed_plan_is_refused_on_resume(tmp_path):
    from benchmark.plan.matrix import build_plan
    from benchmark.sweep.run_state import plan_state

    run_dir = tmp_path / "smoke"
    first = plan_state(run_dir, build_plan(load_spec(SMOKE)), force=False)
    bigger = build_plan(load_spec(_spec_file(tmp_path, search={"trials": 5})))
    # Nothing ran yet (no Tune experiment, no rows): the new plan simply replaces the old one.
    assert plan_state(run_dir, bigger, force=False)["sweep_id"] != first["sweep_id"]
    (run_dir / "tune").mkdir()
    with pytest.raises(ConfigError, match="started with a different plan"):
        plan_state(run_dir, build_plan(load_spec(SMOKE)), force=False)


@pytest.mark.slow
def test_sigkill_mid_sweep_then_rerun_gives_exactly_the_plan(tmp_path):
    """Kill the driver (and its Ray) with SIGKILL mid-sweep; the same command finishes the sweep with
    exactly 8 rows, 4 trials per study, 8 MLflow runs and nothing RUNNING."""
    log_dir = tmp_path / "starts"
    log_dir.mkdir()
    path = _spec_file(tmp_path, fixed__train={"max_epochs": 4},
                      fixed__fake={"epoch_seconds": 0.8, "log_dir": str(log_dir)})
    storage = tmp_path / "runs"
    cmd = [sys.executable, "-m", "benchmark", "run", str(path), "--storage", str(storage), "--num-cpus", "2"]
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}  # frequent snapshots: resume from a checkpoint
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    run_dir = storage / "smoke"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if RunDir(run_dir).trials_dir.is_dir() and len(RunDir(run_dir).frame()) >= 3:
                break
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.2)
        time.sleep(1.5)  # let the next trials run an epoch or two
        rows_at_kill = len(RunDir(run_dir).frame())
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started (same session)
        proc.wait()
    assert 3 <= rows_at_kill < 8

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                          start_new_session=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resuming the sweep" in done.stdout
    _check_complete_sweep(run_dir)
    starts = {f.stem: f.read_text().split() for f in log_dir.iterdir()}
    assert len(starts) == 8
    # At least one trial was started twice; resumed ones continue from their checkpoint (epoch > 0).
    restarted = {k: v for k, v in starts.items() if len(v) > 2}
    assert restarted, starts
