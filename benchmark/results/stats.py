"""Comparing learners over datasets (Demšar, JMLR 2006): average ranks, the Friedman test, pairwise
Wilcoxon signed-rank tests with Holm's correction, and a critical-difference diagram.

Input is one score table: rows = datasets (the independent units), columns = learners (or VLSM · learner
rows of Table 3, any labels), values = a score where higher is better (test Dice). Only datasets with a
score for every learner enter the tests (a test on incomplete blocks would not be the Friedman test); the
functions say how many that leaves. Pure pandas / numpy / scipy.stats, no torch; matplotlib only for the
diagram.

Two caveats a reader should keep in mind, and that the report states next to the numbers: with N datasets
the smallest possible two-sided Wilcoxon p-value is 2 / 2^N (0.25 for the three mini datasets), so pairwise
tests cannot reject anything below N = 6; and the Nemenyi critical difference shrinks only with sqrt(N).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd


def complete_blocks(scores: pd.DataFrame) -> pd.DataFrame:
    """The rows (datasets) that have a finite score for every column (learner)."""
    if scores.shape[1] < 2:
        raise ValueError(f"need at least 2 learners (columns) to compare, got {scores.shape[1]}")
    values = scores.apply(pd.to_numeric, errors="coerce")
    return values[np.isfinite(values.to_numpy(dtype=float)).all(axis=1)]


def ranks(scores: pd.DataFrame, higher_is_better: bool = True) -> pd.DataFrame:
    """Per dataset, rank 1 = best learner; ties share the average of their ranks."""
    from scipy.stats import rankdata

    s = complete_blocks(scores)
    v = -s.to_numpy(dtype=float) if higher_is_better else s.to_numpy(dtype=float)
    return pd.DataFrame(rankdata(v, axis=1, method="average"), index=s.index, columns=s.columns)


def average_ranks(scores: pd.DataFrame, higher_is_better: bool = True) -> pd.Series:
    """Mean rank of each learner over the complete datasets, best (lowest) first."""
    return ranks(scores, higher_is_better).mean(axis=0).sort_values(kind="stable")


@dataclass(frozen=True)
class Friedman:
    n_datasets: int
    n_learners: int
    chi2: float  # Friedman's statistic
    p: float  # its chi-square p-value (k - 1 degrees of freedom)
    f: float  # Iman-Davenport's F, less conservative (Demšar recommends it)
    p_f: float  # its p-value, F(k - 1, (k - 1)(N - 1))


def friedman(scores: pd.DataFrame, higher_is_better: bool = True) -> Friedman:
    """Friedman's test that all learners rank alike; needs 3+ learners and 2+ complete datasets. The
    statistic is `scipy.stats.friedmanchisquare`'s; Iman-Davenport's F is derived from it."""
    from scipy import stats

    r = ranks(scores, higher_is_better)
    n, k = r.shape
    if k < 3 or n < 2:
        raise ValueError(f"the Friedman test needs 3+ learners on 2+ datasets with a score for each; "
                         f"got {k} learners on {n} complete datasets")
    # scipy's own statistic (tie-corrected, as Demšar); ranking direction does not change it
    chi2 = float(stats.friedmanchisquare(*[r[c].to_numpy() for c in r.columns]).statistic)
    p = float(stats.chi2.sf(chi2, k - 1)) if math.isfinite(chi2) else math.nan
    f = (n - 1) * chi2 / (n * (k - 1) - chi2) if math.isfinite(chi2) and n * (k - 1) != chi2 else math.inf
    p_f = float(stats.f.sf(f, k - 1, (k - 1) * (n - 1))) if math.isfinite(f) else 0.0
    return Friedman(n, k, float(chi2), p, float(f), p_f)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given)."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[j]))
        adjusted[j] = running
    return adjusted


def wilcoxon_holm(scores: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Every pair of learners: Wilcoxon signed-rank test over the complete datasets (two-sided, exact
    when scipy can), Holm-adjusted over all pairs. Columns a, b, n, mean_diff (a − b), statistic, p,
    p_holm, significant (p_holm < alpha). A pair whose scores are equal on every dataset gets p = 1."""
    from scipy.stats import wilcoxon

    s = complete_blocks(scores)
    rows = []
    for a, b in combinations(s.columns, 2):
        d = s[a].to_numpy(dtype=float) - s[b].to_numpy(dtype=float)
        if not np.any(d):
            stat, p = 0.0, 1.0
        else:
            res = wilcoxon(s[a], s[b], zero_method="wilcox", alternative="two-sided")
            stat, p = float(res.statistic), float(res.pvalue)
        rows.append({"a": a, "b": b, "n": len(d), "mean_diff": float(d.mean()) if len(d) else math.nan,
                     "statistic": stat, "p": p})
    out = pd.DataFrame(rows, columns=["a", "b", "n", "mean_diff", "statistic", "p"])
    out["p_holm"] = holm(out["p"].to_numpy()) if len(out) else []
    out["significant"] = out["p_holm"] < alpha
    return out


def critical_difference(n_learners: int, n_datasets: int, alpha: float = 0.05) -> float:
    """Nemenyi's critical difference of average ranks: q_alpha * sqrt(k (k + 1) / (6 N)), q_alpha the
    studentized range quantile / sqrt(2) (2.343 for k = 3 at alpha 0.05, Demšar's Table 5)."""
    from scipy.stats import studentized_range

    k, n = n_learners, n_datasets
    if k < 2 or n < 1:
        raise ValueError(f"critical difference needs 2+ learners and 1+ dataset, got {k} and {n}")
    q = float(studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    return q * math.sqrt(k * (k + 1) / (6 * n))


def cliques(avg_ranks: pd.Series, cd: float) -> list[list[str]]:
    """Maximal groups of learners, consecutive in rank, whose ranks span less than `cd` (not significantly
    different by Nemenyi): the bars of a CD diagram. Single learners are left out."""
    r = avg_ranks.sort_values(kind="stable")
    names, values = list(r.index), r.to_numpy(dtype=float)
    groups = []
    for i in range(len(values)):
        j = i
        while j + 1 < len(values) and values[j + 1] - values[i] < cd:
            j += 1
        if j > i and not any(g[0] <= i and j <= g[1] for g in groups):
            groups.append((i, j))
    return [names[i: j + 1] for i, j in groups]


def cd_diagram(avg_ranks: pd.Series, cd: float, path: str | Path, title: str = "") -> Path:
    """Demšar's critical-difference diagram: an axis of average ranks (1 = best, left), each learner's name
    beside its rank, the CD as a bar, and a thick line joining learners not significantly different."""
    from matplotlib.figure import Figure

    r = avg_ranks.sort_values(kind="stable")
    k = len(r)
    lo, hi = 1, max(k, 2)
    half = math.ceil(k / 2)
    fig = Figure(figsize=(7.5, 1.6 + 0.32 * half), dpi=130, layout="constrained")
    ax = fig.subplots()
    ax.set_xlim(lo - 0.6, hi + 0.6)
    ax.set_ylim(-(half + 1.4), 1.6)
    ax.axis("off")
    ax.hlines(0, lo, hi, color="0.1", lw=1)
    for t in range(lo, hi + 1):
        ax.vlines(t, 0, 0.18, color="0.1", lw=1)
        ax.text(t, 0.3, str(t), ha="center", va="bottom", fontsize=9)
    for i, (name, value) in enumerate(r.items()):
        left = i < half
        row = -(i + 1) if left else -(k - i)
        end = lo - 0.5 if left else hi + 0.5
        ax.plot([value, value, end], [0, row, row], color="0.2", lw=0.8)
        ax.text(end + (-0.05 if left else 0.05), row, f"{name} ({value:.2f})", ha="right" if left else "left",
                va="center", fontsize=9)
    ax.plot([lo, lo + cd], [1.15, 1.15], color="0.1", lw=2)
    ax.text(lo + cd / 2, 1.25, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)
    for n, group in enumerate(cliques(r, cd)):
        y = -0.35 - 0.22 * n
        ax.plot([r[group[0]] - 0.03, r[group[-1]] + 0.03], [y, y], color="0.1", lw=3.5, solid_capstyle="round")
    if title:
        ax.set_title(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
