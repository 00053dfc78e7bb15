"""Budget curves (Dodge et al. 2019, "Show Your Work"): what a smaller search would have given.

For a cell with N finished search trials and a budget of n ≤ N trials, the question is: had the search run
only n of them, which trial would the spec's `select` rule have chosen, and what is its test Dice? Averaged
over every n-subset of the N trials (drawn without replacement, all equally likely), this is computed
exactly with order statistics instead of by sampling:

    rank the N trials best-first by the selection metric (rank 1 = the selected trial);
    P(the trial of rank i is the best of a random n-subset) = C(N - i, n - 1) / C(N, n)

(the subset must hold trial i and n - 1 of the N - i trials ranked below it). Ties in the selection metric
are broken as `run_dir.select` breaks them, by the lower trial index, so the ranking is a strict order and
rank 1 is exactly the trial the tables show.

What holds, and what does not:
- at n = N the expected value is the selected trial's test Dice (the Table 3 number), and at n = 1 it is the
  mean test Dice of the cell's trials;
- the expected *selection metric* of the chosen trial (the validation objective) improves monotonically with
  n: a bigger subset's best is never worse;
- the expected *test* Dice of the validation-selected trial need **not** increase with n: when the trial best
  on validation is not the best on test, adding trials can lower it (N = 2, the val-best trial with the lower
  test Dice: n = 1 gives the mean, n = 2 the lower one). The curve shows that honestly; `plateau` reads it as
  "the smallest n from which the curve stays within `tolerance` of its n = N value".

Only search trials count (reruns with further seeds are no draw of the search) and only finished ones with
a finite selection metric (those the rule can choose). Pure pandas / numpy; matplotlib for the figure.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.plan.spec import Selection
from benchmark.results import selection as sel
from benchmark.results import tables as T
from benchmark.results.tables.grid import Grid, grid_md
from trainables.protocol import STATUS_OK

CSV = "budget.csv"
FIGURE = "budget_curves.png"
TOLERANCE = 1.0  # Dice points (percent)


def ranked(cell: pd.DataFrame, rule: Selection) -> pd.DataFrame:
    """The cell's candidate trials, best-first by `rule.by` (ties: lower trial index first, as `select`)."""
    by = pd.to_numeric(cell[rule.by], errors="coerce")
    ok = cell[(cell["status"] == STATUS_OK) & np.isfinite(by.to_numpy(dtype=float))].copy()
    ok["_key"] = pd.to_numeric(ok[rule.by]) * (1 if rule.mode == "min" else -1)
    return ok.sort_values(["_key", "trial_index"], kind="stable").drop(columns="_key")


def best_of_n_weights(n_total: int, n: int) -> np.ndarray:
    """P(rank i is the best of a uniformly random n-subset of n_total), i = 1..n_total (best-first)."""
    if not 1 <= n <= n_total:
        raise ValueError(f"budget n must be in 1..{n_total}, got {n}")
    total = math.comb(n_total, n)
    return np.array([math.comb(n_total - i, n - 1) / total for i in range(1, n_total + 1)])


def expected_curve(values_best_first: np.ndarray) -> np.ndarray:
    """E[value of the best-ranked trial of a random n-subset] for n = 1..N, `values` in best-first order."""
    v = np.asarray(values_best_first, dtype=float)
    return np.array([float(best_of_n_weights(len(v), n) @ v) for n in range(1, len(v) + 1)])


def cell_curves(trials: pd.DataFrame, rule: Selection) -> pd.DataFrame:
    """One row per (cell, n): n, N, expected test Dice (%) and expected selection metric (rule.by)."""
    rows = []
    search = sel.search_only(trials)
    for key, cell in search.groupby(sel.CELL_KEYS, sort=True, dropna=False):
        r = ranked(cell, rule)
        if r.empty or not r["test_dice"].notna().all():
            continue
        test = expected_curve(r["test_dice"].to_numpy(dtype=float) * 100)
        metric = expected_curve(r[rule.by].to_numpy(dtype=float))
        for n in range(1, len(r) + 1):
            rows.append({**dict(zip(sel.CELL_KEYS, key)), "n": n, "N": len(r),
                         "expected_test_dice": test[n - 1], f"expected_{rule.by}": metric[n - 1]})
    return pd.DataFrame(rows, columns=sel.CELL_KEYS + ["n", "N", "expected_test_dice", f"expected_{rule.by}"])


def learner_curves(cells: pd.DataFrame) -> pd.DataFrame:
    """Per (vlsm, learner, variant): the mean over datasets of the cell curves, for n up to the smallest N
    among its datasets (beyond it a mean would mix datasets in and out)."""
    rows = []
    for (vlsm, learner, variant), g in cells.groupby(["vlsm", "learner", "variant"], sort=True):
        n_max = int(g.groupby("dataset")["N"].first().min())
        n_data = g["dataset"].nunique()
        for n in range(1, n_max + 1):
            at = g[g["n"] == n]
            rows.append({"vlsm": vlsm, "learner": learner, "variant": variant, "n": n, "N": n_max,
                         "datasets": n_data, "expected_test_dice": float(at["expected_test_dice"].mean())})
    return pd.DataFrame(rows, columns=["vlsm", "learner", "variant", "n", "N", "datasets", "expected_test_dice"])


def plateau(curve: pd.Series, tolerance: float = TOLERANCE) -> int:
    """Smallest n from which the curve (indexed by n = 1..N) stays within `tolerance` of its value at N."""
    values = curve.sort_index().to_numpy(dtype=float)
    inside = np.abs(values - values[-1]) <= tolerance
    n = len(values)
    while n > 1 and inside[n - 2]:
        n -= 1
    return n


def table(trials: pd.DataFrame, rule: Selection, cells: pd.DataFrame | None = None) -> pd.DataFrame:
    """budget.csv: the per-cell curves (level "cell") and the per-row means over datasets (level "mean over
    datasets", dataset "mean", no selection-metric column: objectives of different datasets do not average).
    `cells`: `cell_curves(trials, rule)` when the caller has it already."""
    cells = cell_curves(trials, rule) if cells is None else cells
    mean = learner_curves(cells).drop(columns="datasets").assign(dataset="mean", level="mean over datasets")
    out = pd.concat([cells.assign(level="cell"), mean], ignore_index=True)
    return out[["level", *sel.CELL_KEYS, "n", "N", "expected_test_dice", f"expected_{rule.by}"]]


def summary(trials: pd.DataFrame, rule: Selection, tolerance: float = TOLERANCE,
            cells: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (vlsm, learner, variant) with N ≥ 2: N, datasets, E[Dice] at n = 1 and n = N, and the plateau n.
    `cells`: `cell_curves(trials, rule)` when the caller has it already."""
    learners = learner_curves(cell_curves(trials, rule) if cells is None else cells)
    rows = []
    for (vlsm, learner, variant), g in learners.groupby(["vlsm", "learner", "variant"], sort=True):
        if g["N"].iloc[0] < 2:
            continue
        curve = g.set_index("n")["expected_test_dice"]
        rows.append({"vlsm": vlsm, "learner": learner, "variant": variant, "N": int(g["N"].iloc[0]),
                     "datasets": int(g["datasets"].iloc[0]), "dice_n1": curve.iloc[0], "dice_nN": curve.iloc[-1],
                     "plateau_n": plateau(curve, tolerance),
                     "monotone": bool(np.all(np.diff(curve.to_numpy()) >= -1e-9))})
    return pd.DataFrame(rows, columns=["vlsm", "learner", "variant", "N", "datasets", "dice_n1", "dice_nN",
                                       "plateau_n", "monotone"])


def report_lines(summ: pd.DataFrame, rule: Selection, figure: str | None, tolerance: float = TOLERANCE) -> list[str]:
    lines = ["## Budget curves", "",
             f"Expected test Dice (%) of the trial the `select` rule (best {rule.by}) picks among n of a cell's N "
             "finished trials drawn without replacement, averaged exactly over all n-subsets (order statistics; "
             "ties broken by the lower trial index, as the selection does); per row the mean over datasets. At "
             "n = N it is Table 3's number. The expected validation objective improves with n; the expected "
             "test Dice need not (a trial best on validation can be worse on test), so a curve may dip. "
             f"Plateau: the smallest n from which the curve stays within {tolerance:g} Dice point of its n = N "
             f"value. Per cell in `{CSV}`.", ""]
    if summ.empty:
        return lines + ["*No row has 2 or more finished trials per cell: no curve to draw.*", ""]
    body = [([T.vlsm_name(r.vlsm), T.learner_name(r.learner)],
             [r.variant, str(r.N), str(r.datasets), T.fmt(r.dice_n1), T.fmt(r.dice_nN), str(r.plateau_n),
              "yes" if r.monotone else "no"]) for r in summ.itertuples(index=False)]
    grid = Grid("", [], ["Model", "Context Learner"], [], ["Variant", "N", "Datasets", "E[Dice] n = 1",
                "E[Dice] n = N", "Plateau n", "Never decreasing"], body, align="lrrrrrl")
    lines += grid_md(grid).splitlines() + [""]
    if figure:
        lines += [f"![budget curves]({figure})", ""]
    return lines


def figure(cells: pd.DataFrame, path: str | Path, variant: str = "default") -> Path | None:
    """One panel per dataset plus the mean over datasets: expected test Dice against the budget n, one line
    per VLSM × learner (cells with N ≥ 2 of `variant`)."""
    from matplotlib.figure import Figure

    c = cells[(cells["variant"] == variant) & (cells["N"] >= 2)]
    if c.empty:
        return None
    mean = learner_curves(c)
    datasets = sorted(c["dataset"].unique())
    panels = [(d, c[c["dataset"] == d]) for d in datasets] + [("mean over datasets", mean)]
    rows = sorted({(v, lrn) for v, lrn in zip(c["vlsm"], c["learner"])})
    cmap = _row_styles(rows)
    fig = Figure(figsize=(3.3 * len(panels) + 1.8, 3.4), dpi=130, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, frame) in zip(axes, panels):
        for (vlsm, learner), g in frame.groupby(["vlsm", "learner"], sort=True):
            colour, style = cmap[(vlsm, learner)]
            g = g.sort_values("n")
            ax.plot(g["n"], g["expected_test_dice"], style, color=colour, marker="o", ms=3, lw=1.4,
                    label=f"{T.vlsm_name(vlsm)} · {T.learner_name(learner)}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("trials in the search (n)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("expected test Dice (%)")
    handles, labels = axes[-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
    fig.suptitle("Budget curves: expected test Dice of the validation-selected trial among n trials", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _row_styles(rows) -> dict[tuple[str, str], tuple[str, str]]:
    """Colour by learner, line style by VLSM, so CLIPSeg and CRIS runs of one learner read as a pair."""
    from benchmark.results.palette import OKABE_ITO

    # Okabe-Ito without its yellow, which a thin line on white hardly shows
    colours = [c for c in OKABE_ITO if c != "#F0E442"]
    colours = colours[:5] + [colours[6], colours[5]]  # pink before vermilion: orange and vermilion apart
    learners = sorted({lrn for _, lrn in rows})
    vlsms = sorted({v for v, _ in rows})
    styles = ("-", "--", ":", "-.")
    return {(v, lrn): (colours[learners.index(lrn) % len(colours)], styles[vlsms.index(v) % len(styles)])
            for v, lrn in rows}


def findings(summ: pd.DataFrame, tolerance: float = TOLERANCE) -> list[str]:
    """What the budget curves say, as facts of this run (no test: an expectation over subsets of its trials)."""
    s = summ[summ["variant"] == "default"]
    if s.empty:
        return []
    text = "; ".join(f"{T.vlsm_name(r.vlsm)} · {T.learner_name(r.learner)} {r.plateau_n} of {r.N}"
                     for r in s.sort_values(["plateau_n", "vlsm", "learner"]).itertuples(index=False))
    dips = s[~s["monotone"]]
    out = [f"- Budget (expected over subsets of this run's trials, not a test): trials needed to come within "
           f"{tolerance:g} Dice point of the full search, mean over datasets: {text}."]
    if len(dips):
        out.append(f"- For {len(dips)} of {len(s)} rows the expected test Dice of the validation-selected trial "
                   "decreases somewhere as the budget grows: validation and test disagree on the best trial there.")
    return out


def write(trials: pd.DataFrame, rule: Selection, out_dir: str | Path, figures: bool = True
          ) -> tuple[list[str], list[Path], pd.DataFrame]:
    """budget.csv (+ the figure): the report lines, the files written and the per-row summary."""
    out_dir = Path(out_dir)
    written = []
    cells = cell_curves(trials, rule)  # once: the table, the figure and the summary all start from it
    budget = table(trials, rule, cells)
    (out_dir / CSV).write_text(budget.to_csv(index=False, float_format="%.6g"), encoding="utf-8")
    written.append(out_dir / CSV)
    fig = figure(cells, out_dir / FIGURE) if figures else None
    if fig is not None:
        written.append(fig)
    summ = summary(trials, rule, cells=cells)
    return report_lines(summ, rule, fig.name if fig else None), written, summ
