"""Resumes that must never lose a recorded result or loop (issue 25, items 1-2): a torn Tune snapshot, a
restore Tune gives up on, a selection rule with a typo."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from benchmark import cli
from benchmark.plan.spec import load_spec
from benchmark.results.run_dir import RunDir
from trainables.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments" / "smoke.yaml"


def _spec_file(tmp_path: Path, **top) -> Path:
    data = yaml.safe_load(SMOKE.read_text())
    data["fixed"] = {"train": {"max_epochs": 2}, "fake": {"epoch_seconds": 0.01, "fail_trials": [1],
                                                           "fail_once": True}}
    data.update(top)
    path = tmp_path / "experiments" / "smoke.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def _state(run_dir: Path) -> dict:
    """What a restart must not change: the rows, the MLflow trial runs, the stored Optuna trials."""
    from mlflow.tracking import MlflowClient

    from benchmark.sweep.studies import load_studies

    df = RunDir(run_dir).frame()
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id], "tags.`tunevlseg.role` = 'trial'", max_results=1000)
    studies = {cid: len(s.trials) for cid, s in load_studies(run_dir).items()}
    return {"rows": sorted(df["trial_id"]), "runs": sorted(r.info.run_id for r in runs), "studies": studies}


def _digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != "driver.lock"}


@pytest.fixture(scope="module")
def failed_once(tmp_path_factory, local_ray):
    """A smoke sweep whose trial 1 of each cell failed once: a rerun resumes it (8 rows, 2 of them errors)."""
    tmp = tmp_path_factory.mktemp("failed_once")
    spec = _spec_file(tmp)
    assert cli.main(["run", str(spec), "--storage", str(tmp / "runs")]) == 1
    return spec, tmp / "runs" / "smoke"


def _copy(src: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "runs" / "smoke"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.ray
@pytest.mark.parametrize("pattern", ["experiment_state-*.json", "searcher-state-*.pkl", "search_gen_state-*.json",
                                     "tuner.pkl"])
def test_a_torn_snapshot_is_one_line_and_nothing_is_dropped(failed_once, tmp_path, capsys, pattern):
    spec, original = failed_once
    run_dir = _copy(original, tmp_path)
    newest = sorted((run_dir / "tune").glob(pattern))[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # an interrupted copy
    before, files = _state(run_dir), _digest(run_dir)
    assert len(before["rows"]) == 8

    for _ in range(2):  # and again: the same answer, never a loop of "resume with"
        code = cli.main(["run", str(spec), "--storage", str(tmp_path / "runs")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0, err
        assert newest.name in err and "--force" in err and "8 recorded trial(s)" in err
    assert _state(run_dir) == before and _digest(run_dir) == files


@pytest.mark.ray
def test_recorded_rows_without_a_snapshot_are_kept(failed_once, tmp_path, capsys):
    import shutil

    spec, original = failed_once
    run_dir = _copy(original, tmp_path)
    shutil.rmtree(run_dir / "tune")
    before = _state(run_dir)
    assert cli.main(["run", str(spec), "--storage", str(tmp_path / "runs")]) == 2
    assert "no Ray Tune snapshot" in capsys.readouterr().err
    assert _state(run_dir) == before


@pytest.mark.ray
def test_a_restore_tune_gives_up_on_drops_nothing(failed_once, tmp_path, capsys, monkeypatch):
    """Whatever makes Ray's restore fail (it then starts the experiment over), the orphan rule refuses."""
    from ray.tune.execution import tune_controller

    spec, original = failed_once
    run_dir = _copy(original, tmp_path)
    before = _state(run_dir)

    def broken(self, resume_config):
        raise ValueError("a restore that fails inside Tune")

    monkeypatch.setattr(tune_controller.TuneController, "resume", broken)
    code = cli.main(["run", str(spec), "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "did not restore" in err, err
    assert _state(run_dir) == before
    monkeypatch.undo()
    # The next rerun resumes the snapshot (no newer, empty one was written) and completes the sweep.
    assert cli.main(["run", str(spec), "--storage", str(tmp_path / "runs")]) == 0
    df = RunDir(run_dir).frame()
    assert len(df) == 8 and set(df["status"]) == {"ok"} and set(before["rows"]) == set(df["trial_id"])


def test_a_misspelt_selection_metric_is_refused_at_load(tmp_path):
    path = _spec_file(tmp_path, select={"by": "objectve", "mode": "min", "report": "test_dice", "reseed": 1})
    with pytest.raises(ConfigError, match=r"select.by: unknown metric 'objectve' \(did you mean 'objective'\?\)"):
        load_spec(path)
    path = _spec_file(tmp_path, select={"by": "objective", "report": "test_dcie"})
    with pytest.raises(ConfigError, match=r"select.report: unknown metric 'test_dcie' \(did you mean 'test_dice'\?\)"):
        load_spec(path)


@pytest.mark.ray
def test_a_sweep_started_with_a_misspelt_rule_completes_its_reseeds_once_fixed(tmp_path, local_ray):
    """A run directory from before select.by was checked: its searcher chose no trial to rerun over seeds
    under `objectve`; with the spec fixed, the rerun schedules them instead of stopping "before the end"
    on every rerun."""
    import dataclasses

    from benchmark.sweep.coordinator import run_sweep

    path = _spec_file(tmp_path, select={"by": "objective", "mode": "min", "report": "test_dice", "reseed": 1})
    spec = load_spec(path)
    spec = dataclasses.replace(spec, fixed={"train": {"max_epochs": 2}, "fake": {"epoch_seconds": 0.01}})
    typo = dataclasses.replace(spec, select=dataclasses.replace(spec.select, by="objectve"))
    first = run_sweep(typo, tmp_path / "runs")
    assert (first.done, first.exit_code) == (8, 0)  # what the old code accepted: no reruns over seeds
    fixed = run_sweep(spec, tmp_path / "runs")
    assert (fixed.done, fixed.planned, fixed.exit_code) == (10, 10, 0)
    df = RunDir(tmp_path / "runs" / "smoke").frame()
    assert sorted(df["reseed"].dropna().astype(int)) == [1, 1]
    assert run_sweep(spec, tmp_path / "runs").noop
