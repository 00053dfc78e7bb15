"""Filling the MLflow mirror from Parquet (benchmark/mlflow_mirror/backfill.py, `tunevlseg mlflow sync`): one run per
trial row with the row's status and metrics, idempotent, the cell's parent run, and its refusals."""

from __future__ import annotations

import json

import pytest

from benchmark.mlflow_mirror.backfill import backfill, sync
from benchmark.results import records
from benchmark.results.run_dir import RunDir
from trainables.config import ConfigError

CELL = {"vlsm": "clipseg", "learner": "coop", "dataset": "kvasir", "variant": ""}
CID = "clipseg_coop_kvasir"


def _row(index, status="ok", error=None, **metrics):
    result = {"status": status, "objective": 0.5 - index / 10, "test_dice": 0.6 + index / 10, **metrics}
    return records.trial_row(spec="smoke", cell=CELL, cell_id=CID, trial_index=index, trial_id=f"t{index}",
                             hp={"lr": 0.01 * (index + 1)}, result=result, error=error, prov={}, started_at=None,
                             finished_at=None)


def _run_dir(tmp_path):
    """A run directory as a sweep whose MLflow server was down leaves it: rows and plan.json, no mlflow.db."""
    rd = RunDir(tmp_path / "smoke")
    rd.write_cell(CID, [_row(0), _row(1), _row(2, status="error", error="RuntimeError: boom")])
    rd.plan_file.write_text(json.dumps({"sweep_id": "sweep1", "fingerprint": {"spec": "smoke", "cells": {
        CID: {"trials": 3}}}}))
    return rd


def test_sync_mirrors_every_row_once_with_its_status_and_metrics(tmp_path):
    from mlflow.tracking import MlflowClient

    rd = _run_dir(tmp_path)
    assert sync(rd.path) == {"created": 3, "ended": 0, "unchanged": 0}
    assert sync(rd.path) == {"created": 0, "ended": 0, "unchanged": 3}  # idempotent: found by trial_id
    client = MlflowClient(f"sqlite:///{rd.mlflow_db}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id], max_results=100)
    trials = {r.data.tags["trial_id"]: r for r in runs if r.data.tags.get("tunevlseg.role") == "trial"}
    assert sorted(trials) == ["t0", "t1", "t2"]
    assert {t: r.info.status for t, r in trials.items()} == {"t0": "FINISHED", "t1": "FINISHED", "t2": "FAILED"}
    assert trials["t1"].data.metrics["test_dice"] == pytest.approx(0.7)
    assert {r.data.tags["tunevlseg.sweep"] for r in trials.values()} == {"sweep1"}
    (cell,) = [r for r in runs if r.data.tags.get("tunevlseg.role") == "cell"]
    assert cell.data.tags["cell_id"] == CID and cell.info.status == "FINISHED"  # 3 of 3 planned rows
    assert not any(p.name == "driver.lock" for p in rd.path.iterdir())  # the lock is released


def test_sync_refuses_what_is_not_a_run_directory_and_a_file_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a run directory"):
        sync(tmp_path)
    rd = _run_dir(tmp_path)
    with pytest.raises(ConfigError, match="file store is deprecated"):
        sync(rd.path, uri="file:///tmp/mlruns")


def test_a_failing_mirror_is_turned_off_at_a_sweep_start_and_raises_otherwise(tmp_path):
    rd = _run_dir(tmp_path)

    class Dead:
        cells: dict = {}
        disabled = None

        def trial_runs(self):
            raise ConnectionError("connection refused")

        def disable(self, what, error):
            self.disabled = (what, str(error))

    mirror = Dead()
    assert backfill(rd.path, mirror, quiet=True) == {"created": 0, "ended": 0, "unchanged": 0}
    assert mirror.disabled == ("backfill", "connection refused")
    with pytest.raises(ConnectionError):
        backfill(rd.path, Dead())
    assert backfill(tmp_path / "empty", Dead()) == {"created": 0, "ended": 0, "unchanged": 0}  # no rows: no call


def test_backfill_config_of_a_rerun_without_params_json():
    from benchmark.mlflow_mirror.backfill import _config_of

    row = {"cell_id": "c", "trial_index": 5, "hp_lr": 0.01, "reseed": 2, "reseed_of": 1, "seed": 12347}
    assert _config_of(row, None)["reseed"] == {"k": 2, "of": 1, "seed": 12347}
    assert _config_of(row, None)["trial"] == {"train": {"seed": 12347}}
    assert "reseed" not in _config_of({**row, "reseed": None, "reseed_of": None}, None)
