"""What a finished sweep leaves for Ray's, MLflow's and Optuna's own tools: one checkpoint per finished trial
(the one `get_best_checkpoint` returns, with the final result), MLflow's sweep run as the parent of the cell
runs with summary metrics, the same epochs counted by MLflow and Optuna, the objective named, UI links that
open the runs list, and a direct `Tuner.restore` of a copy that writes nothing to the original."""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import pytest
import torch
from helpers import TinySegmenter
from helpers import blob_data as _data
from helpers import mlflow_runs as _mlflow_runs
from helpers import spec_file as _spec_file
from helpers import tiny_cfg as _cfg

from benchmark.mlflow_mirror.tags import objective_text, ui_link
from benchmark.plan.spec import load_spec
from benchmark.results.run_dir import RunDir
from benchmark.sweep.coordinator import run_sweep
from trainables.protocol import CHECKPOINT_ARTIFACT, FINAL_FILE
from trainables.trial import CHECKPOINT_FILE, fit

OBJECTIVE = "objective = last-epoch validation loss (minimised)"


def test_fit_reports_each_epoch_once_and_ends_with_only_the_artifact(tmp_path):
    reports = []

    def report(metrics, ckpt_dir):
        kept = None
        if ckpt_dir is not None:
            kept = tmp_path / f"r{len(reports)}"
            shutil.copytree(ckpt_dir, kept)
        reports.append((metrics, kept))

    torch.manual_seed(0)
    final = fit(_cfg(max_epochs=4), report, model=TinySegmenter(), datasets=_data())
    assert [m["epoch"] for m, _ in reports] == [0, 1, 2, 3]  # no second report of the last epoch
    last, last_dir = reports[-1]
    assert last == final and "train_loss" in last and "test_dice" in last
    assert all((d / CHECKPOINT_FILE).is_file() for _, d in reports[:-1])
    # A finished trial's checkpoint: the artifact and its result, no training state (E2E: 4x the model).
    assert sorted(p.name for p in last_dir.iterdir()) == sorted([CHECKPOINT_ARTIFACT, FINAL_FILE])


def test_checkpoint_interval_skips_epoch_checkpoints_and_changes_no_number(tmp_path):
    def run(every):
        dirs = []
        torch.manual_seed(0)
        final = fit(_cfg(max_epochs=4, checkpoint_every_s=every), lambda m, d: dirs.append(d), model=TinySegmenter(),
                    datasets=_data())
        return final, dirs

    each, each_dirs = run(0.0)
    sparse, sparse_dirs = run(3600.0)
    assert all(d is not None for d in each_dirs) and len(each_dirs) == 4
    assert sparse_dirs[:-1] == [None, None, None] and sparse_dirs[-1] is not None  # the final one stays
    for key in ("objective", "test_dice", "test_iou", "best_val_dice", "val_loss", "train_loss"):
        assert sparse[key] == each[key], key  # bit-identical


def test_ui_links_open_the_runs_list_in_the_training_view():
    assert ui_link("7") == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    assert ui_link(None, "http://head:5000/") == "http://head:5000/#/experiments?workflowType=machine_learning"
    assert objective_text({"train": {}}) == OBJECTIVE
    assert objective_text({"train": {"objective": "best_val_dice"}}).startswith("objective = minus the best")


def _intermediate_steps(run_dir: Path, cid: str) -> dict[str, dict[int, float]]:
    import optuna

    study = optuna.load_study(study_name=cid, storage=f"sqlite:///{run_dir / 'optuna.db'}")
    assert study.user_attrs["objective"] == OBJECTIVE
    return {t.user_attrs["ray_trial_id"]: t.intermediate_values for t in study.get_trials()}


@pytest.mark.ray
def test_a_finished_sweep_as_ray_mlflow_and_optuna_see_it(tmp_path, local_ray, capsys):
    from mlflow.tracking import MlflowClient
    from ray import tune

    from benchmark.sweep.coordinator import load_trainable, trial_resources

    spec = load_spec(_spec_file(tmp_path))
    assert run_sweep(spec, tmp_path / "runs").exit_code == 0
    run_dir = tmp_path / "runs" / "smoke"
    df = RunDir(run_dir).frame()

    # Ray: one checkpoint per finished trial, and it is the best one by the objective.
    for trial_dir in (run_dir / "tune").glob("clipseg_*"):
        checkpoints = sorted(trial_dir.glob("checkpoint_*"))
        assert len(checkpoints) == 1 and (checkpoints[0] / FINAL_FILE).is_file(), (trial_dir, checkpoints)
    grid = tune.Tuner.restore(str(run_dir / "tune"),
                              trainable=tune.with_resources(load_trainable(spec.trainable), trial_resources)).get_results()
    assert len(grid) == 8
    for result in grid:
        best = result.get_best_checkpoint("objective", "min")
        assert best is not None and (Path(best.path) / FINAL_FILE).is_file(), best

    # MLflow: sweep run -> cell runs -> trial runs; the sweep's counts and mean selected scores.
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    sweeps = client.search_runs([exp.experiment_id], "tags.`tunevlseg.role` = 'sweep'")
    assert len(sweeps) == 1
    sweep = sweeps[0]
    trials, cells = _mlflow_runs(run_dir)
    assert {c.data.tags["mlflow.parentRunId"] for c in cells} == {sweep.info.run_id}
    assert sweep.info.status == "FINISHED"
    m = sweep.data.metrics
    assert (m["trials_planned"], m["trials_done"], m["trials_failed"], m["cells_done"]) == (8, 8, 0, 2)
    selected = df.loc[df.groupby("cell_id")["objective"].idxmin()]
    assert m["mean_selected_test_dice.default"] == pytest.approx(selected["test_dice"].mean())
    assert all(c.data.params["objective"] == OBJECTIVE for c in cells)

    # The same epochs in MLflow and Optuna: steps 1..3, one value each, the same objective values.
    for run in trials:
        assert run.data.tags["objective"] == OBJECTIVE
        history = client.get_metric_history(run.info.run_id, "objective")
        steps = {h.step: h.value for h in history}
        assert len(steps) == len(history) == 3
        optuna_steps = _intermediate_steps(run_dir, run.data.tags["cell_id"])[run.data.tags["trial_id"]]
        assert sorted(optuna_steps) == sorted(steps) == [1, 2, 3]
        assert all(math.isclose(optuna_steps[s], steps[s]) for s in steps)

    out = capsys.readouterr().out
    assert f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in out


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.ray
def test_ray_tuner_restore_of_a_copy_leaves_the_original_alone(tmp_path, local_ray):
    from ray import tune

    from benchmark.sweep.coordinator import load_trainable, trial_resources

    path = _spec_file(tmp_path, fixed__fake={"epoch_seconds": 0.02, "fail_trials": [1], "fail_at_epoch": 1,
                                             "fail_once": True})
    spec = load_spec(path)
    assert run_sweep(spec, tmp_path / "runs").exit_code == 1  # trial 1 of each cell failed: resumable
    original = tmp_path / "runs" / "smoke"
    copy = tmp_path / "elsewhere" / "smoke"
    shutil.copytree(original, copy)
    before = _digest(original)

    trainable = tune.with_resources(load_trainable(spec.trainable), trial_resources)
    tuner = tune.Tuner.restore(str(copy / "tune"), trainable=trainable, resume_errored=True)
    with pytest.raises(Exception, match=r"restored from .*elsewhere.* write to .*runs/smoke.*tunevlseg run"):
        tuner.fit()
    assert _digest(original) == before

    # The supported way: tunevlseg run on the copy re-points everything and finishes there.
    result = run_sweep(spec, tmp_path / "elsewhere")
    assert (result.done, result.failed) == (8, 0)
    assert _digest(original) == before
