"""Tables 3-5 rendered: the Dice table and its per-cell trial counts as grids (Markdown / LaTeX through
`grid`), and as CSV in the paper's own CSV layout.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from benchmark.results.tables.dice import Table
from benchmark.results.tables.grid import Grid
from benchmark.results.tables.layout import BEYOND_NOTE, E2E_SOURCE_NOTE, beyond_paper, dataset_groups
from benchmark.results.tables.numbers import DASH, fmt


def stub_cells(table: Table, i: int) -> list[str]:
    return list(table.rows[i].labels)


def _mean_cell(table: Table, i: int) -> str:
    if not math.isfinite(table.mean[i]):
        return DASH
    s = f"{fmt(table.mean[i])} ± {fmt(table.std[i])}"
    n, total = int(table.n_mean[i]), len(table.datasets)
    return s if n == total else f"{s} ({n}/{total})"


def _average_cell(table: Table) -> str:
    m, s, k = table.average
    if not k:
        return DASH
    full = sum(r.in_average for r in table.rows)
    partial = any(table.n_mean[i] < len(table.datasets) for i, r in enumerate(table.rows) if r.in_average
                  and math.isfinite(table.mean[i]))
    note = f" ({k}/{full} methods{', some partial' if partial else ''})" if k < full or partial else ""
    return f"{fmt(m)} ± {fmt(s)}{note}"


def _counts_note(table: Table) -> str:
    have = table.n_trials.to_numpy()[table.n_trials.to_numpy() > 0]
    if not len(have):
        return "No trials for this table yet."
    lo, hi = int(have.min()), int(have.max())
    n_cells = len(have)
    span = f"{lo}" if lo == hi else f"{lo}–{hi}"
    failed = int((table.n_trials - table.n_ok).to_numpy().sum())
    return (f"{n_cells} cell(s) run, {span} trial(s) each"
            + (f", {failed} trial(s) not finished ok (excluded from selection)" if failed else "")
            + "; per-cell counts in the trials table.")


def table_grid(table: Table) -> Grid:
    body = []
    for i in range(len(table.rows)):
        body.append((stub_cells(table, i), [fmt(table.dice.loc[i, d.key]) for d in table.datasets]
                     + [_mean_cell(table, i)]))
    rule_before = set()
    if table.average is not None:
        rule_before.add(len(body))
        body.append((["Average across Methods"] + [""] * (len(table.stub) - 1),
                     [""] * len(table.datasets) + [_average_cell(table)]))
    lines = [table.header + ".", _counts_note(table)]
    foot = []
    if (table.n_mean < len(table.datasets)).any() and table.mean.notna().any():
        foot.append("(k/N) after a mean: over the k of N datasets that have a result.")
    if table.average is not None:
        foot.append("Average across Methods: mean ± population std of the prompt-tuning rows' means "
                    "(E2E excluded), as in the paper.")
    if any(r.learner == "e2e" for r in table.rows):
        foot.append(E2E_SOURCE_NOTE)
    if any(beyond_paper(r.learner) for r in table.rows):
        foot.append(BEYOND_NOTE)
    foot.append(f"{DASH}: not run yet, or no trial finished.")
    return Grid(f"Table {table.number}. {table.title}", lines, list(table.stub), dataset_groups(table.datasets)
                + [("Overall", 1)], [d.display for d in table.datasets] + ["Mean ± Std"], body, rule_before, foot)


def counts_grid(table: Table) -> Grid:
    """Trials per cell: "20" when all finished, "18/20" (finished/total) otherwise, "–" when none."""
    body = []
    for i in range(len(table.rows)):
        cells = []
        for d in table.datasets:
            n, ok = int(table.n_trials.loc[i, d.key]), int(table.n_ok.loc[i, d.key])
            cells.append(DASH if n == 0 else (str(n) if ok == n else f"{ok}/{n}"))
        body.append((stub_cells(table, i), cells))
    return Grid(f"Table {table.number} (trials per cell).", ["Number of trials behind each cell; a/b = a of b "
                "trials finished ok."], list(table.stub), dataset_groups(table.datasets),
                [d.display for d in table.datasets], body)


def label_columns(table: Table) -> list[str]:
    return ["vlsm", "learner"] + (["init"] if "Init" in table.stub else [])


def table_csv(table: Table) -> str:
    """The paper's CSV layout (table, vlsm, learner[, init], datasets..., mean, std) plus the selection rule."""
    rows = []
    for i, r in enumerate(table.rows):
        row = {"table": table.number, **dict(zip(label_columns(table), r.labels))}
        for d in table.datasets:
            row[d.display] = csv_num(table.dice.loc[i, d.key])
        row["mean"], row["std"] = csv_num(table.mean[i]), csv_num(table.std[i])
        row["n_datasets"] = int(table.n_mean[i])
        rows.append(row)
    if table.average is not None:
        rows.append({"table": table.number, "vlsm": "", "learner": "Average across Methods",
                     "mean": csv_num(table.average[0]), "std": csv_num(table.average[1]),
                     "n_datasets": ""})
    cols = ["table"] + label_columns(table) + [d.display for d in table.datasets] + ["mean", "std", "n_datasets"]
    df = pd.DataFrame(rows, columns=cols)
    df["selection"] = table.selection
    return df.to_csv(index=False, lineterminator="\n")


def csv_num(x: Any) -> str:
    s = fmt(x)
    return "" if s == DASH else s


def counts_csv(table: Table) -> str:
    """Long format: one line per cell with its number of trials and of finished ones."""
    rows = []
    for i, r in enumerate(table.rows):
        for d in table.datasets:
            rows.append({"table": table.number, **dict(zip(label_columns(table), r.labels)), "dataset": d.display,
                         "n_trials": int(table.n_trials.loc[i, d.key]), "n_ok": int(table.n_ok.loc[i, d.key])})
    return pd.DataFrame(rows).to_csv(index=False, lineterminator="\n")
