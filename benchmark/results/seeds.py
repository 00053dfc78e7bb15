"""Variance over seeds: each cell's selected trial beside the mean ± std of its configuration over seeds.

A sweep with `select: {reseed: K}` reruns every cell's selected configuration with K further training
seeds (benchmark/sweep/reseed.py; rows with `reseed` = k and `reseed_of` = the selected trial's index).
Per cell this table shows the selected trial's test Dice and, beside it, the mean ± sample std (ddof 1) over
the 1 + K runs of that configuration (the selected trial and its reseeds), with their number.

The reseeds rerun the trial the spec's rule selected; under another rule (`--selection best_test`) the
selected trial may be another one, whose configuration was not rerun: such cells show no seed statistics.
Pure pandas, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmark.results import selection as sel
from benchmark.results import tables as T
from benchmark.results.tables.dice_render import csv_num, label_columns
from benchmark.results.tables.layout import dataset_groups
from trainables.protocol import STATUS_OK


def reseed_rows(trials: pd.DataFrame) -> pd.DataFrame:
    if "reseed" not in trials.columns:
        return trials.iloc[0:0]
    return trials[pd.to_numeric(trials["reseed"], errors="coerce").fillna(0) > 0]


def has_reseeds(trials: pd.DataFrame) -> bool:
    return len(reseed_rows(trials)) > 0


@dataclass
class SeedTable:
    table: T.Table
    values: dict[tuple[int, str], list[float]]  # (row position, dataset key) -> test Dice (%) per seed
    mean: pd.DataFrame  # row position x dataset key: mean over seeds (NaN: no reseeds for the cell)
    std: pd.DataFrame  # sample std over seeds (ddof 1)
    n: pd.DataFrame  # runs of the configuration (1 + finished reseeds)

    @property
    def seeds_per_cell(self) -> tuple[int, int]:
        have = self.n.to_numpy()[self.n.to_numpy() > 0]
        return (int(have.min()), int(have.max())) if len(have) else (0, 0)


def seed_table(table: T.Table, trials: pd.DataFrame) -> SeedTable | None:
    """Seed statistics for every cell of `table` whose selected trial was rerun; None if none was."""
    rs = reseed_rows(trials)
    rs = rs[(rs["status"] == STATUS_OK) & rs["test_dice"].notna()]
    if rs.empty or table.chosen.empty:
        return None
    keys = [d.key for d in table.datasets]
    shape = dict(index=range(len(table.rows)), columns=keys)
    mean, std = pd.DataFrame(np.nan, **shape), pd.DataFrame(np.nan, **shape)
    n = pd.DataFrame(0, **shape)
    values: dict[tuple[int, str], list[float]] = {}
    chosen = {tuple(k): r for k, r in zip(table.chosen[sel.CELL_KEYS].itertuples(index=False, name=None),
                                          table.chosen.to_dict("records"))}
    groups = {tuple(k): g for k, g in rs.groupby(sel.CELL_KEYS, sort=False)}
    for i, r in enumerate(table.rows):
        for d in keys:
            key = (r.vlsm, r.learner, d, r.variant)
            c, g = chosen.get(key), groups.get(key)
            if c is None or g is None or not _finite(c.get("test_dice")) or "trial_index" not in c:
                continue
            mine = g[pd.to_numeric(g["reseed_of"], errors="coerce") == int(c["trial_index"])]
            if mine.empty:  # the reseeds reran another trial (a different selection rule)
                continue
            v = [100.0 * float(c["test_dice"])] + [100.0 * float(x) for x in mine.sort_values("reseed")["test_dice"]]
            values[(i, d)] = v
            mean.loc[i, d] = float(np.mean(v))
            std.loc[i, d] = float(np.std(v, ddof=1)) if len(v) > 1 else math.nan
            n.loc[i, d] = len(v)
    if not values:
        return None
    return SeedTable(table, values, mean, std, n)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def row_means(st: SeedTable) -> pd.Series:
    """Per row: the mean over its datasets of the per-dataset seed means."""
    v = st.mean.to_numpy()
    with np.errstate(all="ignore"):
        return pd.Series([np.nanmean(r) if np.isfinite(r).any() else np.nan for r in v], dtype=float)


def seeds_grid(st: SeedTable) -> T.Grid:
    table = st.table
    body = []
    means = row_means(st)
    for i in range(len(table.rows)):
        cells = []
        for d in table.datasets:
            sel_v = table.dice.loc[i, d.key]
            if st.n.loc[i, d.key] == 0:
                cells.append(T.fmt(sel_v))
                continue
            cells.append(f"{T.fmt(sel_v)} / {T.fmt(st.mean.loc[i, d.key])} ± {T.fmt(st.std.loc[i, d.key])} "
                         f"({int(st.n.loc[i, d.key])})")
        body.append((list(table.rows[i].labels), cells + [T.fmt(table.mean[i]), T.fmt(means[i])]))
    lo, hi = st.seeds_per_cell
    span = f"{lo}" if lo == hi else f"{lo}–{hi}"
    lines = [table.header + ".",
             f"Each cell: the selected trial's test Dice / mean ± std over {span} run(s) of its configuration "
             "(the selected trial and its reruns with further training seeds; sample std, ddof 1)."]
    foot = ["A cell with one number had no reruns (not run yet, or a selection rule other than the one the "
            "sweep reran).", "Mean: over datasets, of the selected trials / of the seed means."]
    return T.Grid(f"Table {table.number} over seeds.", lines, list(table.stub),
                  dataset_groups(table.datasets) + [("Mean", 2)],
                  [d.display for d in table.datasets] + ["selected", "over seeds"], body, set(), foot)


def seeds_csv(st: SeedTable) -> str:
    """Long format: one line per cell with the selected trial, the seed mean, std, n and the values."""
    table = st.table
    rows = []
    for i, r in enumerate(table.rows):
        for d in table.datasets:
            v = st.values.get((i, d.key))
            rows.append({"table": table.number, **dict(zip(label_columns(table), r.labels)),
                         "dataset": d.display, "selected": csv_num(table.dice.loc[i, d.key]),
                         "seed_mean": csv_num(st.mean.loc[i, d.key]), "seed_std": csv_num(st.std.loc[i, d.key]),
                         "n_seeds": int(st.n.loc[i, d.key]),
                         "values": " ".join(T.fmt(x) for x in v) if v else ""})
    df = pd.DataFrame(rows)
    df["selection"] = table.selection
    return df.to_csv(index=False, lineterminator="\n")


def render(st: SeedTable, fmt_: str = "md") -> str:
    if fmt_ == "csv":
        return seeds_csv(st)
    g = seeds_grid(st)
    return T.grid_md(g) if fmt_ == "md" else T.grid_tex(g)
