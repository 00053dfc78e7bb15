"""Reading and checking trial rows: a run directory's trials/*.parquet (or one Parquet file) as a clean
one-row-per-trial frame (`records.TRIAL_SCHEMA`), refusing what the tables cannot read with a one-line error.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.results import selection as sel
from benchmark.results.records import SCHEMA_VERSION
from benchmark.results.run_dir import RunDir
from trainables.config import ConfigError

REQUIRED_COLUMNS = ("vlsm", "learner", "dataset", "variant", "status", "test_dice")


class SchemaError(ConfigError):
    """The Parquet file is not a trial table this version can read."""


def supported_schema_versions() -> set[int]:
    """The schema versions this reader understands: the writer's current one (`benchmark.results.records`)."""
    return {int(SCHEMA_VERSION)}


def _check_version(found: set, source: str) -> None:
    unknown = {int(v) for v in found} - supported_schema_versions()
    if unknown:
        raise SchemaError(
            f"{source}: written with schema_version {sorted(unknown)}, this tunevlseg reads "
            f"{sorted(supported_schema_versions())}; regenerate the tables with the tunevlseg version that "
            "wrote the run, or re-export its Parquet with this one")


def check_trials(df: pd.DataFrame, source: str = "trials", by: str = "objective") -> pd.DataFrame:
    """Validate a trial frame and return a cleaned copy (numeric metrics, string keys, no duplicate trials);
    `by` is the column the selection rule ranks trials by."""
    needed = list(dict.fromkeys(list(REQUIRED_COLUMNS) + [by]))
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise SchemaError(
            f"{source}: not a tunevlseg trial table: missing column(s) {', '.join(missing)} "
            f"(has: {', '.join(map(str, df.columns[:12]))}{', ...' if len(df.columns) > 12 else ''}); "
            "pass the run directory written by `tunevlseg run` (its trials/*.parquet)")
    if "schema_version" in df.columns:
        _check_version(set(pd.to_numeric(df["schema_version"], errors="coerce").dropna().unique()), source)
    df = df.copy()
    for col in ("vlsm", "learner", "dataset", "variant", "status"):
        df[col] = df[col].astype("string").fillna("").astype(object)
    for col in list(dict.fromkeys(["test_dice", "objective", by])) + [c for c in df.columns if c.startswith("hp_")]:
        if col in df.columns and not pd.api.types.is_bool_dtype(df[col]):
            converted = pd.to_numeric(df[col], errors="coerce")
            # keep categorical hyperparameters (e.g. a string choice) as they are
            if col in ("test_dice", "objective", by) or converted.notna().sum() == df[col].notna().sum():
                df[col] = converted.astype(float)
    # A resumed run may append a trial twice; the last write wins.
    if "trial_id" in df.columns and df["trial_id"].notna().any():
        df = df.drop_duplicates(subset=list(sel.CELL_KEYS) + ["trial_id"], keep="last")
    return df.reset_index(drop=True)


def _read_parquet(f: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(f)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a file that is not Parquet
        raise SchemaError(f"{f}: cannot be read as Parquet ({type(e).__name__}: {e})") from None
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if meta.get("tunevlseg.schema") == "selected":
        raise SchemaError(f"{f}: this is the run's per-cell selection, not its trials; pass the run directory "
                          "(the tables select from all trials)")
    version = meta.get("tunevlseg.schema_version")
    if version is not None:
        if not version.strip().isdigit():
            raise SchemaError(f"{f}: unreadable schema_version {version!r} in the Parquet metadata")
        _check_version({int(version)}, str(f))
    return table.to_pandas()


def read_trials(path: str | Path, spec: str | None = None, by: str = "objective") -> pd.DataFrame:
    """Trial rows of a run directory (its trials/*.parquet) or of one Parquet file, checked."""
    path = Path(path)
    if path.is_dir():
        files = RunDir(path).trial_files()
        if not files:
            raise FileNotFoundError(f"{path}: no trials/*.parquet in this run directory; pass the run directory "
                                    "written by `tunevlseg run` or a trial Parquet file")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: no such run directory or Parquet file")
    frames = [_read_parquet(f) for f in files]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    source = str(path)
    if "spec" in df.columns:
        specs = sorted(df["spec"].dropna().astype(str).unique())
        from benchmark.sweep.smoke import rehearsal_specs

        if rehearsal_specs(specs):
            raise ConfigError(f"{source}: rows of a rehearsal ({', '.join(rehearsal_specs(specs))}, written by "
                              "`tunevlseg run --smoke`) are not results; tabulate a real run's directory")
        if spec is not None:
            if spec not in specs:
                raise ConfigError(f"{source}: no trials of spec {spec!r}; the file holds: {', '.join(specs)}")
            df = df[df["spec"].astype(str) == spec]
        elif len(specs) > 1:
            raise ConfigError(f"{source}: trials of several specs ({', '.join(specs)}) would be mixed in one "
                              "table; choose one with --spec NAME")
    return check_trials(df, source, by)
