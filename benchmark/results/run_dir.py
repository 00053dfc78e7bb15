"""The one owner of a run directory: its layout, its trial rows, the orphan rule and the selection rule.

Layout of a run directory `<storage>/<spec name>/`:

    trials/<cell_id>.parquet   one row per finished trial of the cell (records.TRIAL_SCHEMA)
    selected.parquet           one row per cell: its selected trial (records.SELECTED_SCHEMA)
    plan.json                  the plan the sweep was started with (resuming checks it has not changed)
    mlflow.db, mlartifacts/    the MLflow mirror (default local tracking)
    optuna.db                  each searched cell's Optuna study (default storage; benchmark/sweep/studies.py)
    tune/                      Ray Tune's experiment (restored on rerun)
    driver.lock                the driver that holds the run (benchmark/sweep/lock.py)
    previous/<timestamp>/      an earlier run, moved aside by `run --force`
    smoke.json, smoke.txt      a rehearsal folder's measurements and table (`run --smoke`, <spec>.smoke/)
    .storage-check-<id>        for a moment at a multi-node start: can every node see the run directory?

The sweep (benchmark.sweep.coordinator), `tunevlseg tables`, `predict`, `plan --from` and the searcher's
resume all go through `RunDir`; no other module spells a file name of this layout. Torch-free.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

from benchmark.plan.spec import Selection
from benchmark.results import records
from trainables.config import ConfigError
from trainables.protocol import STATUS_OK

TRIALS_DIR = "trials"
SELECTED_FILE = "selected.parquet"
PLAN_FILE = "plan.json"
TUNE_DIR = "tune"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
OPTUNA_DB = "optuna.db"
LOCK_FILE = "driver.lock"
PREVIOUS_DIR = "previous"
SMOKE_MARKER = "smoke.json"
SMOKE_TABLE = "smoke.txt"
STORAGE_CHECK = ".storage-check"

# The layout and pickles a run directory is written in, recorded in plan.json (`run_format`, with the
# `written_by` version). 1: runs without the key (their pickles may name modules from before the move of
# 2026-11-29, mapped by benchmark/sweep/snapshots.py); 2: since the key; 3: since the coordinator's split of
# 2026-12-03 (tuner.pkl names the callbacks' new modules, which a format-2 tunevlseg cannot import). Bump it
# when an older tunevlseg could no longer resume what this one writes.
RUN_FORMAT = 3


# ---- the selection rule ----------------------------------------------------------------------------------

def describe(select: Selection) -> str:
    """The `selected_by` text of selected.parquet (read back by `selection_of`)."""
    return f"{select.mode} {select.by} (reporting {select.report})"


def parse(text: str) -> Selection:
    mode, by, rest = text.split(" ", 2)
    return Selection(by=by, mode=mode, report=rest.removeprefix("(reporting ").removesuffix(")"))  # type: ignore[arg-type]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_reseed(row: dict[str, Any]) -> bool:
    """Whether a row reruns a cell's selected configuration with a further seed (column `reseed` = k >= 1;
    spec select.reseed, benchmark/sweep/reseed.py) rather than being one of the search's trials."""
    try:
        return int(row.get("reseed")) > 0
    except (TypeError, ValueError):  # None, NaN, pd.NA: a search trial
        return False


def select(rows: Iterable[dict[str, Any]], rule: Selection) -> dict[str, Any] | None:
    """The trial that stands for its cell: among the search's trials (never a reseed) with status ok and a
    finite `rule.by`, the best `by` in `rule.mode`; ties go to the lowest trial index, so the choice does not
    depend on row order. The one rule for selected.parquet, the sweep's summary, the tables and `predict`."""
    ok = [r for r in rows if r.get("status") == STATUS_OK and _finite(r.get(rule.by)) and not is_reseed(r)]
    if not ok:
        return None
    sign = 1 if rule.mode == "min" else -1
    return min(ok, key=lambda r: (sign * r[rule.by], r["trial_index"]))


# ---- the directory --------------------------------------------------------------------------------------

class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self._rows: dict[str, dict[str, dict[str, Any]]] | None = None

    # -- paths
    @property
    def trials_dir(self) -> Path:
        return self.path / TRIALS_DIR

    def cell_file(self, cell_id: str) -> Path:
        return self.trials_dir / f"{cell_id}.parquet"

    @property
    def selected_file(self) -> Path:
        return self.path / SELECTED_FILE

    @property
    def plan_file(self) -> Path:
        return self.path / PLAN_FILE

    @property
    def tune_dir(self) -> Path:
        return self.path / TUNE_DIR

    @property
    def mlflow_db(self) -> Path:
        return self.path / MLFLOW_DB

    @property
    def mlflow_artifacts(self) -> Path:
        return self.path / MLFLOW_ARTIFACTS

    @property
    def optuna_db(self) -> Path:
        return self.path / OPTUNA_DB

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def previous_dir(self) -> Path:
        return self.path / PREVIOUS_DIR

    @property
    def smoke_marker(self) -> Path:
        return self.path / SMOKE_MARKER

    @property
    def smoke_table(self) -> Path:
        return self.path / SMOKE_TABLE

    def storage_check_marker(self) -> Path:
        """A marker file of a name no other check uses at the same time."""
        import uuid

        return self.path / f"{STORAGE_CHECK}-{uuid.uuid4().hex[:8]}"

    def trial_files(self) -> list[Path]:
        return sorted(self.trials_dir.glob("*.parquet"))

    def has_trials(self) -> bool:
        return bool(self.trial_files())

    # -- plan.json
    def plan_state(self) -> dict[str, Any]:
        """plan.json, checked: readable, and of a run format this tunevlseg can resume (one-line errors)."""
        import json

        try:
            state = json.loads(self.plan_file.read_text())
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as e:
            raise ConfigError(f"{self.plan_file} cannot be read ({type(e).__name__}: {str(e)[:100]}); put back a good "
                              "copy (from a backup, or the run directory it was copied from), or start over with "
                              "--force (the old results are kept under previous/)") from None
        fmt = state.get("run_format", 1)
        if not isinstance(fmt, int) or fmt > RUN_FORMAT:
            from trainables.resources import version

            by = state.get("written_by", "a newer version")
            raise ConfigError(f"{self.path} was written by tunevlseg {by} (run format {fmt}); this tunevlseg "
                              f"{version()} reads run formats up to {RUN_FORMAT}: install tunevlseg>={by} to use it")
        return state

    def write_plan_state(self, state: dict[str, Any]) -> None:
        """plan.json, written whole (temp file + rename)."""
        import json
        import os

        tmp = self.plan_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.plan_file)

    # -- rows
    def rows(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every trial row, {cell_id: {trial_id: row}}, read from trials/*.parquet once per RunDir."""
        if self._rows is None:
            self._rows = {}
            for f in self.trial_files():
                try:
                    self._rows[f.stem] = {r["trial_id"]: r for r in records.read_rows(f)}
                except FileNotFoundError:
                    raise
                except Exception as e:  # noqa: BLE001 - pyarrow's ArrowInvalid, OSError: one line either way
                    raise ConfigError(f"{f} cannot be read ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:100]})"
                                      f"; it is written whole (temp file + rename), so it was cut by a copy or a full "
                                      f"disk, or is not readable by you: put back a good copy (a backup, the run "
                                      f"directory it was copied from) or fix its permissions") from None
        return self._rows

    def all_rows(self) -> list[dict[str, Any]]:
        return [r for cell in self.rows().values() for r in cell.values()]

    def frame(self):
        """All trial rows as one pandas DataFrame with the pinned dtypes (empty if none yet)."""
        import pyarrow as pa

        return records.to_pandas(pa.Table.from_pylist(self.all_rows(), schema=records.TRIAL_SCHEMA))

    def write_cell(self, cell_id: str, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        records.write_rows(rows, self.cell_file(cell_id))
        if self._rows is not None:
            self._rows[cell_id] = {r["trial_id"]: r for r in rows}

    def drop_orphans(self, rows: dict[str, dict[str, dict]], known: set[str]) -> dict[str, dict[str, dict]]:
        """The orphan rule: a row whose trial the (restored) Tune experiment does not know was written by a
        trial Tune will run again under a new id; keeping it would count that trial twice. Rewrites the
        cells that lose a row and returns the rows that remain."""
        kept = {}
        for cid, cell in rows.items():
            kept[cid] = {tid: r for tid, r in cell.items() if tid in known}
            if len(kept[cid]) != len(cell):
                self.write_cell(cid, kept[cid].values())
        return kept

    # -- selection
    def selection(self) -> Selection:
        """The spec's `select` this run was swept with (recorded in selected.parquet); the default rule for
        a run that has not written one yet."""
        if self.selected_file.is_file():
            import pyarrow.parquet as pq

            values = set(pq.read_table(self.selected_file, columns=["selected_by"]).column(0).to_pylist())
            if len(values) == 1 and values != {None}:
                return parse(values.pop())
        return Selection()

    def write_selected(self, cells: dict[str, dict[str, Any]], rows: dict[str, dict[str, dict]],
                       rule: Selection) -> None:
        out = []
        for cid, cell in cells.items():
            cell_rows = list(rows.get(cid, {}).values())
            best = select(cell_rows, rule)
            if best is None:
                continue
            out.append({**best, "selected_by": describe(rule), "trials_done": len(cell_rows),
                        "trials_planned": cell["planned"]})
        records.write_rows(out, self.selected_file, schema=records.SELECTED_SCHEMA)

    def selected_trial_dir(self, cell_id: str) -> Path:
        """The Ray Tune directory of the trial selected.parquet reports for `cell_id` (its artifact is there)."""
        if not self.selected_file.is_file():
            raise FileNotFoundError(f"{self.selected_file} not found: {self.path} is not a run directory with "
                                    "finished cells")
        from benchmark.plan.matrix import match_cell

        selected = records.read_rows(self.selected_file)
        cell_id = match_cell(cell_id, {r["cell_id"] for r in selected}, where="--cell")  # either spelling
        rows = [r for r in selected if r["cell_id"] == cell_id]
        found = sorted(self.tune_dir.glob(f"{cell_id}_*_{rows[0]['trial_id']}"))
        if not found:
            raise FileNotFoundError(f"the selected trial {rows[0]['trial_id']} of {cell_id} has no directory "
                                    f"under {self.tune_dir}")
        return found[0]
