"""Trial records: the pinned Parquet schema, provenance, atomic writes. Parquet is the source of truth.

Where the files live in a run directory is `benchmark.results.run_dir.RunDir`'s business. Files are written to a temporary name and renamed over the old one, so a crash never leaves a torn file.
No torch here (the tables path reads these files on machines without it).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from benchmark.plan.search_space import HP_NAMES, PAPER

from trainables.protocol import STATUS_ERROR, STATUS_OK, TRIAL_STATUSES

SCHEMA_VERSION = 1

_HP_TYPES = {p.name: (pa.bool_() if p.choices and all(isinstance(c, bool) for c in p.choices)
                      else pa.int64() if p.kind in ("int", "categorical") else pa.float64()) for p in PAPER}

KEY_FIELDS = [
    ("spec", pa.string()), ("cell_id", pa.string()), ("vlsm", pa.string()), ("learner", pa.string()),
    ("dataset", pa.string()), ("variant", pa.string()), ("trial_index", pa.int64()), ("trial_id", pa.string()),
    ("status", pa.string()), ("error", pa.string()),
]
HP_FIELDS = [(f"hp_{name}", _HP_TYPES[name]) for name in HP_NAMES]
METRIC_FIELDS = [
    ("objective", pa.float64()), ("val_loss", pa.float64()), ("best_val_dice", pa.float64()),
    ("best_epoch", pa.int64()), ("test_dice", pa.float64()), ("test_iou", pa.float64()),
    ("test_dice_orig", pa.float64()), ("test_iou_orig", pa.float64()), ("epochs_run", pa.int64()),
    ("seconds", pa.float64()), ("trainable_params", pa.int64()), ("peak_gpu_mem_mb", pa.float64()),
]
# Variance over seeds (spec select.reseed, benchmark/sweep/reseed.py). Null on a search trial, so files
# written before these columns existed read the same (the columns come back null).
RESEED_FIELDS = [
    ("seed", pa.int64()),  # the trial's training seed (train.seed), when its config sets one
    ("reseed", pa.int64()),  # k = 1..K on a rerun of the cell's selected configuration with a further seed
    ("reseed_of", pa.int64()),  # that selected trial's trial_index
]
# What a spec's `select.by` / `select.report` may name (benchmark/plan/spec.py checks it at load).
METRIC_NAMES = tuple(name for name, _ in METRIC_FIELDS)
PROVENANCE_FIELDS = [
    ("git_sha", pa.string()), ("git_dirty", pa.bool_()), ("versions", pa.string()),  # JSON {package: version}
    ("gpu_name", pa.string()), ("started_at", pa.timestamp("us", tz="UTC")),
    ("finished_at", pa.timestamp("us", tz="UTC")),
]
TRIAL_SCHEMA = pa.schema(KEY_FIELDS + HP_FIELDS + METRIC_FIELDS + PROVENANCE_FIELDS + RESEED_FIELDS,
                         metadata={"tunevlseg.schema": "trials", "tunevlseg.schema_version": str(SCHEMA_VERSION)})
SELECTED_SCHEMA = pa.schema(
    list(TRIAL_SCHEMA) + [pa.field("selected_by", pa.string()), pa.field("trials_done", pa.int64()),
                          pa.field("trials_planned", pa.int64())],
    metadata={"tunevlseg.schema": "selected", "tunevlseg.schema_version": str(SCHEMA_VERSION)})

_METRIC_NAMES = [name for name, _ in METRIC_FIELDS]
_INT_COLUMNS = {f.name for f in TRIAL_SCHEMA if pa.types.is_integer(f.type)}


# ---- provenance -----------------------------------------------------------------------------------------

VERSIONED_PACKAGES = ("tunevlseg", "torch", "transformers", "ray", "optuna", "mlflow", "pandas", "pyarrow",
                      "numpy", "albumentations")


def provenance(repo: str | Path | None = None) -> dict[str, Any]:
    """Git sha + dirty flag of the checkout that ran (None from an installed wheel: `trainables.resources`)
    and package versions, tunevlseg's always (the driver's: every node runs the same environment)."""
    from trainables import resources

    if repo is None:
        sha, dirty = resources.git_commit()
    else:  # an explicit repository (tests)
        sha, dirty = resources.git_at(Path(repo))
    versions = {"python": platform.python_version()}
    for pkg in VERSIONED_PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    versions.setdefault("tunevlseg", resources.version())
    return {"git_sha": sha or "unknown", "git_dirty": dirty, "versions": json.dumps(versions, sort_keys=True)}




# ---- rows -----------------------------------------------------------------------------------------------


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def trial_row(*, spec: str, cell: dict[str, str], cell_id: str, trial_index: int, trial_id: str,
              hp: dict[str, Any], result: dict[str, Any] | None, error: str | None, prov: dict[str, Any],
              started_at: datetime | None, finished_at: datetime | None, seed: int | None = None,
              reseed: dict[str, Any] | None = None) -> dict[str, Any]:
    """One Parquet row from a trial's config and last result. `error` (a Tune-level failure) wins over a
    reported status."""
    result = dict(result or {})
    status = STATUS_ERROR if error else str(result.get("status") or STATUS_OK)
    if status not in TRIAL_STATUSES:
        status = STATUS_ERROR
    err = error or (result.get("error") or None)
    row: dict[str, Any] = {"spec": spec, "cell_id": cell_id, **{k: cell[k] for k in ("vlsm", "learner", "dataset",
                           "variant")}, "trial_index": int(trial_index), "trial_id": trial_id, "status": status,
                           "error": err}
    for name in HP_NAMES:
        row[f"hp_{name}"] = hp.get(name)
    for name in _METRIC_NAMES:
        row[name] = result.get(name)
    if row["seconds"] is None:
        row["seconds"] = result.get("time_total_s")
    row.update(git_sha=prov.get("git_sha"), git_dirty=prov.get("git_dirty"), versions=prov.get("versions"),
               gpu_name=result.get("gpu_name") or prov.get("gpu_name"), started_at=started_at,
               finished_at=finished_at)
    row.update(seed=seed, reseed=(reseed or {}).get("k"), reseed_of=(reseed or {}).get("of"))
    return _clean(row)


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if k in _INT_COLUMNS and isinstance(v, float):
            v = None if not math.isfinite(v) else int(v)
        out[k] = v
    return out


# ---- files ----------------------------------------------------------------------------------------------


def atomic_write_table(table: pa.Table, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never a torn one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_rows(rows: Iterable[dict[str, Any]], path: str | Path, schema: pa.Schema = TRIAL_SCHEMA) -> None:
    rows = sorted(rows, key=lambda r: (r["cell_id"], r["trial_index"], r["trial_id"]))
    atomic_write_table(pa.Table.from_pylist(rows, schema=schema), path)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    table = pq.read_table(path)
    check_schema(table.schema, path)
    return table.to_pylist()


def check_schema(schema: pa.Schema, path: str | Path = "") -> None:
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    version = meta.get("tunevlseg.schema_version")
    if version != str(SCHEMA_VERSION):
        raise ValueError(f"{path}: Parquet schema version {version or 'missing'}, this code reads "
                         f"{SCHEMA_VERSION}; re-run the sweep or migrate the file")


def to_pandas(table: pa.Table):
    """Nullable integer/boolean columns stay integer/boolean (hp_prompt_depth is never a float)."""
    import pandas as pd

    mapping = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
    return table.to_pandas(types_mapper=mapping.get)
