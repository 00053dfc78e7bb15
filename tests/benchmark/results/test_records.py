"""Trial records (benchmark/results/records.py): the pinned Parquet schema, rows from a trial's result,
provenance, atomic writes and the schema-version check."""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmark.results import records as R

CELL = {"vlsm": "clipseg", "learner": "coop", "dataset": "kvasir", "variant": ""}
PROV = {"git_sha": "abc", "git_dirty": False, "versions": "{}"}


def _row(index=0, result=None, error=None, started_at=None, **kw):
    return R.trial_row(spec="s", cell=CELL, cell_id="clipseg_coop_kvasir", trial_index=index, trial_id=f"t{index}",
                       hp={"lr": 0.01, "prompt_depth": 3.0}, result=result, error=error, prov=PROV,
                       started_at=started_at, finished_at=None, **kw)


def test_a_row_has_every_schema_column_and_ints_stay_ints():
    row = _row(result={"objective": 0.2, "test_dice": 0.8, "epochs_run": 5.0, "best_epoch": math.nan,
                       "time_total_s": 12.5})
    assert set(row) == set(R.TRIAL_SCHEMA.names)
    assert row["status"] == "ok" and row["error"] is None and row["test_dice"] == 0.8
    assert row["epochs_run"] == 5 and isinstance(row["epochs_run"], int)
    assert row["best_epoch"] is None  # a NaN in an integer column is a null, not a crash
    assert row["hp_prompt_depth"] == 3 and row["hp_lr"] == 0.01
    assert row["seconds"] == 12.5  # from Tune's time_total_s when the trial reported none
    assert row["git_sha"] == "abc" and row["reseed"] is None


def test_a_tune_error_wins_and_an_unknown_status_is_an_error():
    assert _row(result={"status": "ok"}, error="RuntimeError: x")["status"] == "error"
    assert _row(result={"status": "pruned"})["status"] == "pruned"
    assert _row(result={"status": "exploded"})["status"] == "error"
    assert _row(result={"status": "error", "error": "diverged"})["error"] == "diverged"


def test_rows_round_trip_sorted_with_the_pinned_schema(tmp_path):
    path = tmp_path / "trials" / "c.parquet"
    rows = [_row(2), _row(0, started_at=datetime(2026, 12, 3, tzinfo=timezone.utc)), _row(1, reseed={"k": 1, "of": 0})]
    R.write_rows(rows, path)
    back = R.read_rows(path)
    assert [r["trial_index"] for r in back] == [0, 1, 2]
    assert back[1]["reseed"] == 1 and back[1]["reseed_of"] == 0
    assert pq.read_schema(path).remove_metadata() == R.TRIAL_SCHEMA.remove_metadata()
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    frame = R.to_pandas(pq.read_table(path))
    assert str(frame["hp_prompt_depth"].dtype) == "Int64" and str(frame["git_dirty"].dtype) == "boolean"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "c.parquet"
    R.write_rows([_row(0)], path)
    before = path.read_bytes()

    def torn(table, where):
        open(where, "wb").write(b"PAR1 half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(R.pq, "write_table", torn)
    with pytest.raises(OSError, match="No space left"):
        R.write_rows([_row(0), _row(1)], path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c.parquet"]


def test_a_file_of_another_schema_version_is_refused_naming_it(tmp_path):
    path = tmp_path / "old.parquet"
    table = pa.Table.from_pylist([_row(0)], schema=R.TRIAL_SCHEMA)
    pq.write_table(table.replace_schema_metadata({"tunevlseg.schema_version": "0"}), path)
    with pytest.raises(ValueError, match=r"old.parquet: Parquet schema version 0, this code reads 1"):
        R.read_rows(path)
    pq.write_table(table.replace_schema_metadata(None), path)
    with pytest.raises(ValueError, match="schema version missing"):
        R.read_rows(path)


def test_provenance_names_the_commit_and_the_versions(tmp_path):
    prov = R.provenance(repo=tmp_path)  # not a git checkout
    assert prov["git_sha"] == "unknown"
    versions = json.loads(prov["versions"])
    assert {"python", "tunevlseg", "pyarrow"} <= set(versions) and versions["pyarrow"] == pa.__version__
