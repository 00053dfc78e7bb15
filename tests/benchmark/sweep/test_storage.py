"""Where a sweep writes (benchmark/sweep/storage.py): the storage path and MLflow URI rules, and a full or
read-only storage refused in one line before Ray starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmark import cli
from benchmark.sweep.storage import check_free_space, check_storage, check_uri, default_uri, mlflow_problem, storage_problem
from trainables.config import ConfigError

REPO = Path(__file__).resolve().parents[3]
SMOKE = REPO / "experiments" / "smoke.yaml"


def test_full_storage_is_one_line_before_ray(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUNEVLSEG_MIN_FREE_MB", str(10**12))
    code = cli.main(["run", str(SMOKE), "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "MB free" in err and "another --storage" in err
    assert not (tmp_path / "runs" / "smoke" / "driver.lock").exists()


def test_read_only_storage_is_one_line_before_ray(tmp_path, monkeypatch, capsys):
    import errno

    real_open = os.open

    def read_only(path, flags, *a, **k):
        if str(path).endswith("driver.lock") and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a, **k)

    from benchmark.sweep import lock as lock_mod

    monkeypatch.setattr(lock_mod.os, "open", read_only)
    code = cli.main(["run", str(SMOKE), "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Read-only file system" in err and "writable" in err


# ---- the rules themselves (the preflight and `tunevlseg run` share them) ----------------------------------

@pytest.mark.parametrize("storage, named", [
    ("s3://bucket/runs", "only a filesystem path"),
    ("gs://bucket/runs", "only a filesystem path"),
    ("runs/relative", "is not absolute"),
])
def test_storage_other_than_an_absolute_path_is_refused_with_the_fix(storage, named):
    problem = storage_problem(storage)
    assert problem and named in problem and storage in problem and "\n" not in problem
    with pytest.raises(ConfigError, match=named):
        check_storage(storage)


def test_a_relative_storage_is_told_its_absolute_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert f"--storage {tmp_path / 'runs'}" in storage_problem("runs")


def test_absolute_and_home_paths_are_accepted(tmp_path, monkeypatch):
    assert storage_problem(str(tmp_path)) is None
    assert check_storage(tmp_path) == tmp_path
    monkeypatch.setenv("HOME", str(tmp_path))
    assert storage_problem("~/runs") is None
    assert check_storage("~/runs") == tmp_path / "runs"


@pytest.mark.parametrize("uri, named", [
    ("sqlite:///runs/mlflow.db", "is relative"),
    ("file:///tmp/mlruns", "file store is deprecated"),
    ("/tmp/mlruns", "file store is deprecated"),
])
def test_mlflow_uris_that_cannot_work_are_refused(uri, named):
    problem = mlflow_problem(uri)
    assert problem and named in problem and uri in problem
    with pytest.raises(ConfigError, match=named):
        check_uri(uri)


@pytest.mark.parametrize("uri", [None, "", "sqlite:////abs/mlflow.db", "http://head:5000", "https://mlflow.example"])
def test_mlflow_uris_that_work_pass(uri):
    assert mlflow_problem(uri) is None


def test_the_default_uri_is_the_run_directorys_own_sqlite_with_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = default_uri("runs/smoke")
    assert uri == f"sqlite:///{tmp_path / 'runs' / 'smoke' / 'mlflow.db'}"
    assert uri.startswith("sqlite:////") and mlflow_problem(uri) is None


def test_free_space_floor_from_the_argument_or_the_environment(tmp_path, monkeypatch):
    check_free_space(tmp_path, min_mb=0)
    with pytest.raises(ConfigError, match=r"MB free \(< 1e\+12 MB\)"):
        check_free_space(tmp_path, min_mb=1e12)
    monkeypatch.setenv("TUNEVLSEG_MIN_FREE_MB", "1e12")
    with pytest.raises(ConfigError, match="TUNEVLSEG_MIN_FREE_MB"):
        check_free_space(tmp_path)
    monkeypatch.setenv("TUNEVLSEG_MIN_FREE_MB", "0")
    check_free_space(tmp_path)
