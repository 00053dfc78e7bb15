"""Our Tables 3-5 beside the paper's numbers (results/paper/table{3,4,5}.csv): matched by display labels
and dataset, with the difference between the printed (two-decimal) values; a mean over other datasets than the
paper's gets no difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.results.tables.dice import Table
from benchmark.results.tables.dice_render import csv_num, label_columns, stub_cells
from benchmark.results.tables.grid import Grid
from benchmark.results.tables.layout import PAPER_KEYS, Dataset, dataset_groups
from benchmark.results.tables.numbers import fmt, fmt_signed, rounded
from trainables import resources

# The paper prints these in the text under Tables 3 and 5; its CSVs have no row for them.
PAPER_AVERAGE = {3: (73.10, 6.24), 5: (70.51, 5.40)}
PAPER_DIR = resources.path("paper")


def load_paper(number: int, paper_dir: str | Path | None = None) -> pd.DataFrame:
    path = Path(paper_dir or PAPER_DIR) / f"table{number}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the paper's Table {number} is missing; it ships in results/paper/")
    return pd.read_csv(path, dtype={"vlsm": str, "learner": str, "init": str}, keep_default_na=False,
                       na_values=[""])


@dataclass
class Comparison:
    table: Table
    paper: pd.DataFrame  # percent, same index/columns as table.dice plus "mean", "std"; NaN = paper has none
    ours: pd.DataFrame
    paper_average: tuple[float, float] | None

    @property
    def common(self) -> list[Dataset]:
        """The table's datasets that the paper has a column for: the only cells a comparison can hold."""
        return [d for d in self.table.datasets if d.key in PAPER_KEYS]

    @property
    def not_comparable(self) -> str:
        """Why nothing at all is comparable (no dataset in common with the paper); "" when something is."""
        if self.common:
            return ""
        ours = ", ".join(d.key for d in self.table.datasets) or "none"
        return (f"Table {self.table.number} not compared with the paper: this run's datasets ({ours}) are none "
                f"of the paper's ten, so no cell and no mean is over the same data.")

    @property
    def partial(self) -> pd.Series:
        """Rows whose mean is not over exactly the datasets of the paper's mean (fewer of the paper's, or any
        other dataset): their mean/std are not comparable."""
        ours = np.isfinite(self.table.dice.to_numpy(dtype=float))
        theirs = np.isfinite(self.paper[[d.key for d in self.table.datasets]].to_numpy(dtype=float))
        in_paper = np.array([d.key in PAPER_KEYS for d in self.table.datasets], dtype=bool)
        full = ours[:, in_paper].all(axis=1) & ~ours[:, ~in_paper].any(axis=1)
        same = (ours == theirs).all(axis=1) | ~theirs.any(axis=1)  # rows the paper has no numbers for
        return pd.Series(~(full & same), index=self.table.dice.index)

    @property
    def average_comparable(self) -> bool:
        t = self.table
        rows = [i for i, r in enumerate(t.rows) if r.in_average]
        return bool(t.average and t.average[2] == len(rows) and not self.partial.iloc[rows].any())

    @property
    def diff(self) -> pd.DataFrame:
        """ours − paper between the printed (two-decimal) values; NaN where not comparable."""
        d = self.ours.map(rounded) - self.paper
        d.loc[self.partial.to_numpy(), ["mean", "std"]] = np.nan
        return d


def compare(table: Table, paper: pd.DataFrame | None = None) -> Comparison:
    """Our cells beside the paper's, matched by display labels (VLSM, learner[, init]) and dataset name."""
    paper = load_paper(table.number) if paper is None else paper
    label_cols = ["vlsm", "learner"] + (["init"] if "init" in paper.columns else [])
    lookup = {tuple(str(v) for v in r[label_cols]): r for _, r in paper.iterrows()}
    cols = [d.key for d in table.datasets] + ["mean", "std"]
    ours = table.dice.copy()
    ours["mean"], ours["std"] = table.mean, table.std
    theirs = pd.DataFrame(np.nan, index=ours.index, columns=cols)
    for i, r in enumerate(table.rows):
        p = lookup.get(tuple(r.labels[: len(label_cols)]))
        if p is None:
            continue
        for d in table.datasets:
            if d.display in p.index and pd.notna(p[d.display]):
                theirs.loc[i, d.key] = float(p[d.display])
        for c in ("mean", "std"):
            if c in p.index and pd.notna(p[c]):
                theirs.loc[i, c] = float(p[c])
    return Comparison(table, theirs, ours[cols], PAPER_AVERAGE.get(table.number))


def comparison_grid(cmp: Comparison) -> Grid:
    table = cmp.table
    cols = [d.key for d in table.datasets]
    body = []

    diff = cmp.diff
    n_all = len(table.datasets)

    def cell(i, c):
        o, p = cmp.ours.loc[i, c], cmp.paper.loc[i, c]
        ours = fmt(o)
        if c in ("mean", "std") and pd.notna(o) and cmp.partial[i]:
            ours += f" ({int(table.n_mean[i])}/{n_all})"
        if pd.isna(p):
            return ours
        return f"{ours} / {fmt(p)}" + (f" ({fmt_signed(diff.loc[i, c])})" if pd.notna(diff.loc[i, c]) else "")

    for i in range(len(table.rows)):
        body.append((stub_cells(table, i), [cell(i, c) for c in cols] + [cell(i, "mean"), cell(i, "std")]))
    rule_before = set()
    if table.average is not None:
        rule_before.add(len(body))
        m = table.average[0] if table.average[2] else math.nan
        s = table.average[1] if table.average[2] else math.nan
        pm, ps = cmp.paper_average or (math.nan, math.nan)

        ok = cmp.average_comparable

        def avg(o, p):
            ours = fmt(o) + ("" if ok or not math.isfinite(o) else " (partial)")
            return ours if math.isnan(p) else f"{ours} / {fmt(p)}" + (
                f" ({fmt_signed(rounded(o) - p)})" if ok else "")
        body.append((["Average across Methods"] + [""] * (len(table.stub) - 1),
                     [""] * len(cols) + [avg(m, pm), avg(s, ps)]))
    d = diff.to_numpy()[:, : len(cols)]
    d = d[np.isfinite(d)]
    summary = (f"{len(d)} cell(s) comparable; mean difference {fmt_signed(d.mean())}, mean |difference| "
               f"{fmt(np.abs(d).mean())} Dice points; ours higher in {(d > 0).sum()}." if len(d)
               else "No cell comparable with the paper yet.")
    return Grid(f"Table {table.number} vs paper. {table.title}",
                [table.header + ".", "Each cell: ours / paper (ours − paper); a mean over fewer datasets than "
                 "the paper's, marked (k/N), gets no difference.", summary], list(table.stub),
                dataset_groups(table.datasets) + [("Overall", 2)],
                [x.display for x in table.datasets] + ["Mean", "Std"], body, rule_before)


def comparison_csv(cmp: Comparison) -> str:
    """Long format: table, labels, column, ours, paper, diff (percent, two decimals)."""
    t = cmp.table
    rows = []
    names = {d.key: d.display for d in t.datasets} | {"mean": "Mean", "std": "Std"}
    diff = cmp.diff
    for i, r in enumerate(t.rows):
        for c in cmp.ours.columns:
            o, p = cmp.ours.loc[i, c], cmp.paper.loc[i, c]
            rows.append({"table": t.number, **dict(zip(label_columns(t), r.labels)), "column": names[c],
                         "ours": csv_num(o), "paper": csv_num(p), "diff": csv_num(diff.loc[i, c])})
    if t.average is not None and cmp.paper_average and cmp.average_comparable:
        for c, o, p in (("Mean", t.average[0], cmp.paper_average[0]), ("Std", t.average[1], cmp.paper_average[1])):
            rows.append({"table": t.number, "vlsm": "", "learner": "Average across Methods", "column": c,
                         "ours": csv_num(o), "paper": csv_num(p), "diff": csv_num(rounded(o) - p)})
    df = pd.DataFrame(rows)
    df["selection"] = t.selection
    return df.to_csv(index=False, lineterminator="\n")
