"""RunDir (benchmark/results/run_dir.py), the one owner of a run directory: its layout, its trial rows, the
orphan rule, the selection rule and plan.json's checks."""

from __future__ import annotations

import json
import math

import pytest

from benchmark.plan.spec import Selection
from benchmark.results import records
from benchmark.results.run_dir import RUN_FORMAT, RunDir, describe, is_reseed, parse, select
from trainables.config import ConfigError

CELL = {"vlsm": "clipseg", "learner": "coop", "dataset": "kvasir", "variant": ""}


def _row(cell_id="clipseg_coop_kvasir", index=0, status="ok", reseed=None, **metrics):
    result = {"status": status, "objective": 0.5, "test_dice": 0.7, **metrics}
    return records.trial_row(spec="s", cell=CELL, cell_id=cell_id, trial_index=index, trial_id=f"{cell_id[:6]}{index}",
                             hp={}, result=result, error=None, prov={}, started_at=None, finished_at=None,
                             reseed=reseed)


def test_the_layout_is_spelled_here_under_the_run_directory(tmp_path):
    run = RunDir(tmp_path)
    assert run.cell_file("c1") == tmp_path / "trials" / "c1.parquet"
    assert (run.selected_file, run.plan_file, run.tune_dir) == (
        tmp_path / "selected.parquet", tmp_path / "plan.json", tmp_path / "tune")
    assert (run.mlflow_db, run.mlflow_artifacts, run.optuna_db) == (
        tmp_path / "mlflow.db", tmp_path / "mlartifacts", tmp_path / "optuna.db")
    assert not run.has_trials() and run.all_rows() == [] and len(run.frame()) == 0


def test_the_selection_rule_best_ok_finite_search_trial_ties_to_the_lowest_index():
    rows = [_row(index=3, objective=0.2), _row(index=1, objective=0.2), _row(index=0, objective=0.1, status="error"),
            _row(index=4, objective=math.nan), _row(index=5, objective=0.05, reseed={"k": 1, "of": "x"}),
            _row(index=2, objective=0.4)]
    assert select(rows, Selection())["trial_index"] == 1  # the error, the NaN and the reseed never stand
    assert select(rows, Selection(mode="max"))["trial_index"] == 2
    assert select(rows, Selection(by="test_dice", mode="max"))["trial_index"] == 1  # all 0.7: lowest index
    assert select(list(reversed(rows)), Selection())["trial_index"] == 1  # row order does not matter
    assert select([_row(status="error")], Selection()) is None


@pytest.mark.parametrize("value, expected", [(None, False), (math.nan, False), (0, False), (1, True), (3, True)])
def test_is_reseed(value, expected):
    assert is_reseed({"reseed": value}) is expected


def test_the_selected_by_text_reads_back_as_the_rule():
    rule = Selection(by="best_val_dice", mode="max", report="test_iou")
    assert describe(rule) == "max best_val_dice (reporting test_iou)"
    assert parse(describe(rule)) == rule


def test_rows_round_trip_and_the_orphan_rule_rewrites_only_the_cells_that_lose_a_row(tmp_path):
    run = RunDir(tmp_path)
    run.write_cell("a", [_row("a", 0), _row("a", 1)])
    run.write_cell("b", [_row("b", 0)])
    fresh = RunDir(tmp_path).rows()
    assert {c: sorted(r) for c, r in fresh.items()} == {"a": ["a0", "a1"], "b": ["b0"]}
    b_before = run.cell_file("b").stat().st_mtime_ns
    kept = run.drop_orphans(fresh, known={"a1", "b0"})
    assert {c: sorted(r) for c, r in kept.items()} == {"a": ["a1"], "b": ["b0"]}
    assert sorted(RunDir(tmp_path).rows()["a"]) == ["a1"]  # rewritten on disk
    assert run.cell_file("b").stat().st_mtime_ns == b_before  # untouched


def test_selected_parquet_records_the_rule_and_finds_the_trial_directory(tmp_path):
    run = RunDir(tmp_path)
    assert run.selection() == Selection()  # nothing written yet: the default rule
    with pytest.raises(FileNotFoundError, match="not a run directory with finished cells"):
        run.selected_trial_dir("clipseg_coop_kvasir")
    rule = Selection(by="test_dice", mode="max")
    rows = {"clipseg_coop_kvasir": {r["trial_id"]: r for r in (_row(index=0, test_dice=0.6), _row(index=1))}}
    run.write_selected({"clipseg_coop_kvasir": {"planned": 4}}, rows, rule)
    (selected,) = records.read_rows(run.selected_file)
    assert selected["trial_index"] == 1 and selected["trials_done"] == 2 and selected["trials_planned"] == 4
    assert RunDir(tmp_path).selection() == rule
    with pytest.raises(FileNotFoundError, match="has no directory"):
        run.selected_trial_dir("clipseg_coop_kvasir")
    trial_dir = run.tune_dir / f"clipseg_coop_kvasir_00001_{selected['trial_id']}"
    trial_dir.mkdir(parents=True)
    assert run.selected_trial_dir("clipseg_coop_kvasir") == trial_dir


def test_plan_json_missing_damaged_or_newer_is_told_apart(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(FileNotFoundError):
        run.plan_state()
    run.plan_file.write_text("{not json")
    with pytest.raises(ConfigError, match="plan.json cannot be read") as e:
        run.plan_state()
    assert "\n" not in str(e.value)
    run.plan_file.write_text(json.dumps({"run_format": RUN_FORMAT + 1, "written_by": "9.9"}))
    with pytest.raises(ConfigError, match=r"install tunevlseg>=9.9"):
        run.plan_state()
    run.plan_file.write_text(json.dumps({"sweep_id": "x"}))  # format 1: no key
    assert run.plan_state() == {"sweep_id": "x"}


def test_a_torn_trial_file_is_one_line_naming_it(tmp_path):
    run = RunDir(tmp_path)
    run.write_cell("a", [_row("a", 0)])
    data = run.cell_file("a").read_bytes()
    run.cell_file("a").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="a.parquet cannot be read") as e:
        RunDir(tmp_path).rows()
    assert "\n" not in str(e.value)
