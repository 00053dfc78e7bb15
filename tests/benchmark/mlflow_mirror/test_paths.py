"""A copied run directory's MLflow store points at its own artifacts after `benchmark.mlflow_mirror.paths.repoint`."""

from __future__ import annotations

import shutil

from benchmark.mlflow_mirror.paths import main, repoint
from benchmark.results.run_dir import RunDir


def test_a_copied_run_directory_reads_its_own_artifacts(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    a = RunDir(tmp_path / "a" / "mini")
    a.path.mkdir(parents=True)
    client = MlflowClient(f"sqlite:///{a.mlflow_db}")
    exp = client.create_experiment("mini", artifact_location=a.mlflow_artifacts.as_uri())
    run = client.create_run(exp).info.run_id
    client.log_text(run, "from a", "note.txt")
    client.set_terminated(run)

    b = RunDir(tmp_path / "b" / "mini")
    shutil.copytree(a.path, b.path)
    (a.mlflow_artifacts / run / "artifacts" / "note.txt").write_text("changed in a")
    assert repoint(b.path) == 2  # the experiment and its run
    moved = MlflowClient(f"sqlite:///{b.mlflow_db}")
    assert moved.get_experiment(exp).artifact_location == b.mlflow_artifacts.resolve().as_uri()
    assert moved.get_run(run).info.artifact_uri.startswith(b.mlflow_artifacts.resolve().as_uri() + "/")
    assert moved.download_artifacts(run, "note.txt", str(tmp_path)) and \
        (tmp_path / "note.txt").read_text() == "from a"
    assert repoint(b.path) == 0  # already current
    assert main([str(b.path)]) == 0 and "current" in capsys.readouterr().out


def test_the_ui_address_printed_opens_the_runs_list(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from benchmark.mlflow_mirror.paths import main

    run = tmp_path / "run"
    run.mkdir()
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    exp = client.create_experiment("mini", artifact_location=(run / "mlartifacts").as_uri())
    assert main([str(run)]) == 0
    assert f"http://127.0.0.1:5000/#/experiments/{exp}/runs?workflowType=machine_learning" in capsys.readouterr().out
