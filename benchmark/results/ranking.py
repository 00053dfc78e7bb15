"""The report's ranking of Table 3's rows across datasets: average ranks, Friedman, pairwise Wilcoxon-Holm
and a critical-difference diagram (benchmark.results.stats, after Demšar 2006).

Scores are test Dice per (dataset, row): the mean over seeds where the sweep reran the selected
configuration (spec select.reseed), else the selected trial alone; the section says which. Datasets are the
independent units; only rows with a score on every dataset that has one for all of them enter the tests.
Pure pandas / scipy; matplotlib for the diagram.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.results import stats as S
from benchmark.results import tables as T

CD_FIGURE = "cd_diagram.png"
BOOTSTRAP = 2000  # resamples for the rank intervals
ALPHA = 0.05


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


def seed_values(table: T.Table, seed_table=None) -> dict[tuple[str, str], list[float]]:
    """{(row label, dataset display): test Dice (%) per seed} of the cells rerun over seeds."""
    if seed_table is None:
        return {}
    display = {d.key: d.display for d in table.datasets}
    return {(_label(table, i), display[d]): v for (i, d), v in seed_table.values.items() if len(v) > 1}


def rank_intervals(frame: pd.DataFrame, seeds: dict[tuple[str, str], list[float]] | None = None,
                   n_boot: int = BOOTSTRAP, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Percentile bootstrap interval of each row's average rank: datasets (the rows of `frame`) are drawn
    with replacement; where a cell was rerun over seeds, its score in each draw is the mean of its seed
    scores drawn with replacement (the score `scores` uses is their mean). Columns avg_rank, lo, hi; the same
    `seed` gives the same intervals."""
    from scipy.stats import rankdata

    seeds = seeds or {}
    rng = np.random.default_rng(seed)
    values = frame.to_numpy(dtype=float)
    n, k = values.shape
    per_seed = {(i, j): np.asarray(seeds[(frame.index[i], frame.columns[j])], dtype=float)
                for i in range(n) for j in range(k) if (frame.index[i], frame.columns[j]) in seeds}
    draws = np.empty((n_boot, n, k))
    for b in range(n_boot):  # the draws in the generator's order, one resample after the other
        rows = rng.integers(0, n, n)
        draw = draws[b]
        draw[:] = values[rows]
        for pos, i in enumerate(rows):
            for j in range(k):
                v = per_seed.get((i, j))
                if v is not None:
                    draw[pos, j] = rng.choice(v, len(v)).mean()
    # ranked in one call, not one call per resample (2,000 calls were ~1 s of `tables`): the same ranks
    out = rankdata(-draws, axis=2, method="average").mean(axis=1)
    tail = (1 - level) / 2 * 100
    avg = S.average_ranks(frame)
    lo, hi = np.percentile(out, [tail, 100 - tail], axis=0)
    ci = pd.DataFrame({"lo": lo, "hi": hi}, index=frame.columns)
    return pd.DataFrame({"avg_rank": avg, "lo": ci.loc[avg.index, "lo"], "hi": ci.loc[avg.index, "hi"]})


@dataclass
class Ranking:
    """What the section computed: the report lines, the CD figure, and the statistics the findings read."""
    lines: list[str]
    figures: list[Path]
    frame: pd.DataFrame | None = None  # datasets x rows that entered the tests
    intervals: pd.DataFrame | None = None  # rank_intervals
    friedman: S.Friedman | None = None
    pairs: pd.DataFrame | None = None  # wilcoxon_holm
    cd: float = math.nan
    dropped: list[str] = field(default_factory=list)
    reason: str = ""  # why the tests were not computed


def section(table: T.Table, seed_table=None, out_dir: str | Path | None = None) -> Ranking:
    """The report section (average ranks with bootstrap intervals, Friedman, Wilcoxon-Holm, CD diagram when
    `out_dir`) and its statistics."""
    frame, source = scores(table, seed_table)
    head = [f"## Ranking across datasets (Table {table.number})", ""]
    if frame.shape[1] < 3:
        reason = f"{frame.shape[1]} row(s) with results; ranking needs 3 or more"
        return Ranking(head + [f"*Not computed: {reason}.*", ""], [], reason=reason)
    # Rows missing a dataset would leave no complete dataset: keep the datasets most rows have, then the rows
    # complete on them.
    datasets = frame.index[frame.notna().sum(axis=1) == frame.notna().sum(axis=1).max()]
    frame = frame.loc[datasets]
    dropped = [c for c in frame.columns if frame[c].isna().any()]
    frame = frame.drop(columns=dropped)
    n, k = frame.shape
    if n < 2 or k < 3:
        reason = (f"{k} row(s) with a result on each of {n} dataset(s); the Friedman test needs 3+ rows on 2+ "
                  "datasets")
        return Ranking(head + [f"*Not computed: {reason}.*", ""], [], reason=reason)
    seeds = seed_values(table, seed_table)
    ci = rank_intervals(frame, seeds)
    fr = S.friedman(frame)
    pairs = S.wilcoxon_holm(frame, ALPHA)
    cd = S.critical_difference(k, n, ALPHA)
    over = "datasets and, within each rerun cell, its seeds" if seeds else "datasets"
    lines = head + [
        f"Scores: {source}. Datasets are the independent units (Demšar 2006): {n} dataset(s) "
        f"({', '.join(frame.index)}), {k} rows; rank 1 = best per dataset, ties share ranks."
        + (f" Left out (no result on every one of these datasets): {', '.join(dropped)}." if dropped else ""), "",
        f"95% interval of each average rank: percentile bootstrap over {over} ({BOOTSTRAP} resamples, seed 0)"
        + (f"; with {n} datasets a resample is one of only {math.comb(2 * n - 1, n)} multisets of datasets, so "
           "the intervals are coarse" if n < 8 else "") + ".", "",
        "| Row | Average rank | 95% interval | Mean Dice (%) |", "|:---|---:|:---:|---:|"]
    lines += [f"| {name} | {r.avg_rank:.2f} | [{r.lo:.2f}, {r.hi:.2f}] | {T.fmt(frame[name].mean())} |"
              for name, r in ci.iterrows()]
    lines += ["", f"Friedman test (all rows rank alike; scipy.stats.friedmanchisquare): χ² = {fr.chi2:.2f}, "
              f"p {_p(fr.p)}; Iman-Davenport F({k - 1}, {(k - 1) * (n - 1)}) = {_num(fr.f)}, p {_p(fr.p_f)}.", ""]
    min_p = min_wilcoxon_p(n)
    if min_p >= ALPHA:
        lines += [f"Pairwise Wilcoxon signed-rank tests (two-sided, Holm over {len(pairs)} pairs): not shown. With "
                  f"{n} datasets the smallest possible p is 2/2^{n} = {min_p:.3g}, so no pair can reach {ALPHA}; "
                  f"the pairwise tests need 6+ datasets (smallest p {min_wilcoxon_p(6):.3g}).", ""]
    else:
        lines += [f"Pairwise two-sided Wilcoxon signed-rank tests over the {n} datasets, Holm-adjusted over all "
                  f"{len(pairs)} pairs (smallest possible p with {n} datasets: {min_p:.3g}).", "",
                  "| A | B | mean A − B | p | p (Holm) | |", "|:---|:---|---:|---:|---:|:---|"]
        for r in pairs.sort_values(["p_holm", "p"], kind="stable").itertuples(index=False):
            lines.append(f"| {r.a} | {r.b} | {T.fmt_signed(r.mean_diff)} | {_p(r.p, False)} | {_p(r.p_holm, False)} | "
                         f"{'significant' if r.significant else ''} |")
        lines.append("")
    lines += [f"Nemenyi critical difference (α = {ALPHA}, {k} rows, {n} datasets): {cd:.2f} average ranks; rows "
              "joined by a bar in the diagram are not significantly different.", ""]
    figures = []
    if out_dir is not None:
        path = S.cd_diagram(ci["avg_rank"], cd, Path(out_dir) / CD_FIGURE,
                            title=f"Average rank over {n} datasets (Table {table.number}; 1 = best)")
        figures.append(path)
        lines += [f"![critical difference diagram]({CD_FIGURE})", ""]
    return Ranking(lines, figures, frame, ci, fr, pairs, cd, dropped)


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided exact Wilcoxon signed-rank p-value over n paired datasets."""
    return 2.0 / 2 ** n


def findings(rk: Ranking, table_number: int = 3) -> list[str]:
    """Plain-language findings of the ranking, each sentence read off a test above it and never stronger:
    an ordering is claimed only where the Friedman test rejects, a pair only where its Holm-adjusted
    Wilcoxon p is below α (and the Friedman test rejects), and every claim carries its p-value or interval."""
    if rk.friedman is None:
        return [f"- Table {table_number}: no ranking test ({rk.reason}), so no claim about which row is better."]
    fr, ci, pairs, frame = rk.friedman, rk.intervals, rk.pairs, rk.frame
    n, k = frame.shape
    out = []
    if fr.p < ALPHA:
        out.append(f"- Table {table_number}: the {k} rows do not all rank alike over the {n} datasets (Friedman "
                   f"χ² = {fr.chi2:.2f}, p {_p(fr.p)}).")
    else:
        out.append(f"- Table {table_number}: the Friedman test does not reject that all {k} rows rank alike over "
                   f"the {n} datasets (χ² = {fr.chi2:.2f}, p {_p(fr.p)}; Iman-Davenport p {_p(fr.p_f)}). The "
                   "order of the average ranks and means is descriptive: these statistics support no row being "
                   "better than another.")
    min_p = min_wilcoxon_p(n)
    sig = pairs[pairs["significant"]]
    if min_p >= ALPHA:
        out.append(f"- With {n} datasets no pairwise test can reach p < {ALPHA} (the smallest two-sided Wilcoxon "
                   f"p is 2/2^{n} = {min_p:.3g}): no pair of rows is shown to differ.")
    elif fr.p >= ALPHA:
        out.append(f"- Pairwise tests are not read as findings because the Friedman test does not reject "
                   f"({len(sig)} of {len(pairs)} pairs have a Holm-adjusted p < {ALPHA}).")
    elif sig.empty:
        out.append(f"- No pair of rows differs significantly after Holm's correction over {len(pairs)} pairs "
                   f"(smallest adjusted p {_p(float(pairs['p_holm'].min()))}).")
    else:
        for r in sig.sort_values("p_holm", kind="stable").itertuples(index=False):
            hi, lo, d = (r.a, r.b, r.mean_diff) if r.mean_diff >= 0 else (r.b, r.a, -r.mean_diff)
            out.append(f"- {hi} scores higher than {lo}: by {d:.2f} Dice points on average over {n} datasets "
                       f"(Wilcoxon p {_p(r.p)}, Holm-adjusted p {_p(r.p_holm)}).")
        out.append(f"- The other {len(pairs) - len(sig)} of {len(pairs)} pairs do not differ significantly.")
    best = ci.index[0]
    overlap = [o for o in ci.index[1:] if ci.loc[o, "lo"] <= ci.loc[best, "hi"]]
    out.append(f"- Best average rank (descriptive): {best} ({ci.loc[best, 'avg_rank']:.2f}, 95% bootstrap interval "
               f"[{ci.loc[best, 'lo']:.2f}, {ci.loc[best, 'hi']:.2f}]"
               + (f", coarse with {n} datasets" if n < 8 else "") + f"); the intervals of {len(overlap)} of the "
               f"other {k - 1} rows overlap it.")
    rank = ci["avg_rank"]
    apart = [(a, b) for a, b in combinations(ci.index, 2) if rank[b] - rank[a] > rk.cd]
    if apart and fr.p < ALPHA:
        out += [f"- {a} ranks better than {b} by the Nemenyi post-hoc test (average ranks {rank[a]:.2f} vs "
                f"{rank[b]:.2f}, {rank[b] - rank[a]:.2f} apart > critical difference {rk.cd:.2f} at α = {ALPHA})."
                for a, b in apart]
        out.append("- No other pair's average ranks are further apart than the critical difference.")
    elif apart:
        out.append(f"- {len(apart)} pair(s) of rows are further apart in average rank than the Nemenyi critical "
                   f"difference ({rk.cd:.2f}), but the Friedman test does not reject, so no post-hoc claim is made.")
    else:
        out.append(f"- Nemenyi: no two rows' average ranks differ by more than the critical difference "
                   f"({float(rank.max() - rank.min()):.2f} at most, CD = {rk.cd:.2f}).")
    return out


_ABLATION = {"gaussian_init": "Gaussian-initialised vs 'a photo of a'", "no_upsampler": "without vs with the "
              "learnable upsampler"}


def ablation_findings(tables: dict[int, T.Table]) -> list[str]:
    """One finding per ablated row of Tables 4 and 5: its selected test Dice against the same VLSM · learner
    of Table 3 (the default variant), paired over the datasets both have, two-sided Wilcoxon signed-rank,
    Holm-adjusted over the table's rows."""
    from scipy.stats import wilcoxon

    if 3 not in tables:
        return []
    base = tables[3]
    index = {(r.vlsm, r.learner): i for i, r in enumerate(base.rows)}
    out = []
    for number in (4, 5):
        if number not in tables:
            continue
        t = tables[number]
        found = []
        for i, r in enumerate(t.rows):
            j = index.get((r.vlsm, r.learner))
            if r.variant == base.rows[0].variant or r.variant not in _ABLATION or j is None:
                continue
            a, b = t.dice.loc[i], base.dice.loc[j].reindex(t.dice.columns)
            both = a.notna() & b.notna()
            if both.sum() < 1:
                continue
            d = (a[both] - b[both]).to_numpy(dtype=float)
            p = 1.0 if not np.any(d) else float(wilcoxon(d, zero_method="wilcox").pvalue)
            found.append((f"{T.vlsm_name(r.vlsm)} · {T.learner_name(r.learner)}", r.variant, d, p))
        if not found:
            continue
        adjusted = S.holm(np.array([f[3] for f in found]))
        for (name, variant, d, p), ph in zip(found, adjusted):
            n = len(d)
            verdict = (f"significant (Holm-adjusted p {_p(ph)})" if ph < ALPHA else
                       f"not significant (Wilcoxon p {_p(p)}, Holm-adjusted {_p(ph)}"
                       + (f"; with {n} datasets p cannot go below {min_wilcoxon_p(n):.3g})" if
                          min_wilcoxon_p(n) >= ALPHA else ")"))
            out.append(f"- Table {number}, {name}, {_ABLATION[variant]}: {T.fmt_signed(float(d.mean()))} Dice points "
                       f"on average over {n} dataset(s), lower on {int((d < 0).sum())} of {n}; {verdict}.")
    return out


def _p(p: float, relation: bool = True) -> str:
    """"= 0.015" / "< 0.001" (with `relation`), else the bare number for a table cell."""
    if not math.isfinite(p):
        return "= –" if relation else "–"
    if p < 0.001:
        return "< 0.001"
    return f"= {p:.3f}" if relation else f"{p:.3f}"


def _num(x: float) -> str:
    return f"{x:.2f}" if math.isfinite(x) else "∞"
