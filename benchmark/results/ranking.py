"""The report's ranking of Table 3's rows across datasets: average ranks, Friedman, pairwise Wilcoxon-Holm
and a critical-difference diagram (benchmark.results.stats, after Demšar 2006).

Scores are test Dice per (dataset, row): the mean over seeds where the sweep reran the selected
configuration (spec select.reseed), else the selected trial alone; the section says which. Datasets are the
independent units; only rows with a score on every dataset that has one for all of them enter the tests.
Pure pandas / scipy; matplotlib for the diagram.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.results import stats as S
from benchmark.results import tables as T

CD_FIGURE = "cd_diagram.png"


def _label(table: T.Table, i: int) -> str:
    return " · ".join(table.rows[i].labels)


def scores(table: T.Table, seed_table=None) -> tuple[pd.DataFrame, str]:
    """(datasets x rows score frame, a sentence saying what the scores are)."""
    values = table.dice.copy()
    source = "the selected trial's test Dice (%) per cell (one run each; no reruns over seeds in this run)"
    if seed_table is not None:
        have = seed_table.n > 0
        values = values.where(~have, seed_table.mean)
        source = ("the mean test Dice (%) over seeds of each cell's selected configuration"
                  + ("" if have.to_numpy()[np.isfinite(table.dice.to_numpy())].all()
                     else " (the selected trial alone where a cell was not rerun)"))
    frame = pd.DataFrame({_label(table, i): values.loc[i] for i in range(len(table.rows))})
    frame.index = [d.display for d in table.datasets]
    frame = frame.loc[:, frame.notna().any(axis=0)]  # rows not run at all
    return frame, source


def section(table: T.Table, seed_table=None, out_dir: str | Path | None = None) -> tuple[list[str], list[Path]]:
    """Markdown lines of the report section and the figure it wrote (the CD diagram, when `out_dir`)."""
    frame, source = scores(table, seed_table)
    head = [f"## Ranking across datasets (Table {table.number})", ""]
    if frame.shape[1] < 3:
        return head + [f"*Not computed: {frame.shape[1]} row(s) with results; ranking needs 3 or more.*", ""], []
    # Rows missing a dataset would leave no complete dataset: keep the datasets most rows have, then the rows
    # complete on them.
    datasets = frame.index[frame.notna().sum(axis=1) == frame.notna().sum(axis=1).max()]
    frame = frame.loc[datasets]
    dropped = [c for c in frame.columns if frame[c].isna().any()]
    frame = frame.drop(columns=dropped)
    n, k = frame.shape
    if n < 2 or k < 3:
        return head + [f"*Not computed: {k} row(s) with a result on each of {n} dataset(s); the Friedman test "
                       "needs 3+ rows on 2+ datasets.*", ""], []
    avg = S.average_ranks(frame)
    fr = S.friedman(frame)
    pairs = S.wilcoxon_holm(frame)
    cd = S.critical_difference(k, n)
    lines = head + [
        f"Scores: {source}. Datasets are the independent units (Demšar 2006): {n} dataset(s) "
        f"({', '.join(frame.index)}), {k} rows; rank 1 = best per dataset, ties share ranks."
        + (f" Left out (no result on every one of these datasets): {', '.join(dropped)}." if dropped else ""), "",
        "| Row | Average rank | Mean Dice (%) |", "|:---|---:|---:|"]
    lines += [f"| {name} | {r:.2f} | {T.fmt(frame[name].mean())} |" for name, r in avg.items()]
    lines += ["", f"Friedman test (all rows rank alike): χ² = {fr.chi2:.2f}, p {_p(fr.p)}; Iman-Davenport "
              f"F({k - 1}, {(k - 1) * (n - 1)}) = {_num(fr.f)}, p {_p(fr.p_f)}.", ""]
    min_p = 2.0 / 2 ** n
    if min_p >= 0.05:
        lines += [f"Pairwise Wilcoxon signed-rank tests (two-sided, Holm over {len(pairs)} pairs): not shown. With "
                  f"{n} datasets the smallest possible p is 2/2^{n} = {min_p:.3g}, so no pair can reach 0.05; the "
                  f"pairwise tests need 6+ datasets (smallest p {2 / 2 ** 6:.3g}).", ""]
    else:
        lines += [f"Pairwise two-sided Wilcoxon signed-rank tests over the {n} datasets, Holm-adjusted over all "
                  f"{len(pairs)} pairs (smallest possible p with {n} datasets: {min_p:.3g}).", "",
                  "| A | B | mean A − B | p | p (Holm) | |", "|:---|:---|---:|---:|---:|:---|"]
        for r in pairs.sort_values(["p_holm", "p"], kind="stable").itertuples(index=False):
            lines.append(f"| {r.a} | {r.b} | {T.fmt_signed(r.mean_diff)} | {_p(r.p, False)} | {_p(r.p_holm, False)} | "
                         f"{'significant' if r.significant else ''} |")
        lines.append("")
    lines += [f"Nemenyi critical difference (α = 0.05, {k} rows, {n} datasets): {cd:.2f} average ranks; rows "
              "joined by a bar in the diagram are not significantly different.", ""]
    figures = []
    if out_dir is not None:
        path = S.cd_diagram(avg, cd, Path(out_dir) / CD_FIGURE,
                            title=f"Average rank over {n} datasets (Table {table.number}; 1 = best)")
        figures.append(path)
        lines += [f"![critical difference diagram]({CD_FIGURE})", ""]
    return lines, figures


def _p(p: float, relation: bool = True) -> str:
    """"= 0.015" / "< 0.001" (with `relation`), else the bare number for a table cell."""
    if not math.isfinite(p):
        return "= –" if relation else "–"
    if p < 0.001:
        return "< 0.001"
    return f"= {p:.3f}" if relation else f"{p:.3f}"


def _num(x: float) -> str:
    return f"{x:.2f}" if math.isfinite(x) else "∞"
