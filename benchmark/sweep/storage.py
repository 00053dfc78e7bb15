"""Where a sweep writes: the one set of rules for the storage path and the MLflow tracking URI.

Both `tunevlseg run` (benchmark.sweep.coordinator) and the cluster preflight (benchmark.sweep.preflight)
check with these functions, so they accept and refuse the same things.

- storage: an absolute filesystem path (trials run in temporary working directories; on a cluster, a
  shared mount such as /mnt/nfs/tunevlseg, the same path on every node). The run directory's Parquet
  files are written by the driver with plain file I/O, so object stores (s3://, gs://) are not supported.
- MLflow: `sqlite:////absolute/path/mlflow.db` (default: the run directory's mlflow.db) or a server URI.
"""

from __future__ import annotations

from pathlib import Path

from benchmark.results.run_dir import RunDir
from trainables.config import ConfigError


def storage_problem(storage: str) -> str | None:
    if "://" in storage:
        return (f"storage {storage!r}: only a filesystem path is supported (on a cluster: a shared mount such as "
                "/mnt/nfs/tunevlseg, the same path on every node)")
    if not Path(storage).expanduser().is_absolute():
        return (f"storage {storage!r} is not absolute; trials run in temporary directories (on other nodes too), "
                f"so give an absolute path (e.g. --storage {Path.cwd() / storage})")
    return None


def mlflow_problem(uri: str | None) -> str | None:
    if not uri:
        return None
    if uri.startswith("sqlite:///") and not uri[len("sqlite:///"):].startswith("/"):
        return (f"MLflow URI {uri!r} is relative; use sqlite:////absolute/path/mlflow.db or, on a cluster, the "
                "server's http://<head>:5000 (cluster/mlflow-server.sh)")
    if uri.startswith("file:") or "://" not in uri:
        return (f"MLflow URI {uri!r}: use http://<head>:5000 (cluster/mlflow-server.sh) or sqlite:////abs/mlflow.db "
                "(the file store is deprecated in MLflow 3)")
    return None


def check_storage(storage: str | Path) -> Path:
    problem = storage_problem(str(storage))
    if problem:
        raise ConfigError(problem)
    return Path(str(storage)).expanduser()


def check_uri(uri: str) -> None:
    problem = mlflow_problem(uri)
    if problem:
        raise ConfigError(problem)


def default_uri(run_dir: str | Path) -> str:
    return f"sqlite:///{RunDir(run_dir).mlflow_db.resolve()}"  # four slashes: absolute path
