"""Tables 3-5: test Dice (%) per (VLSM, learner) row and dataset column, each cell's trial chosen by the
selection rule; row means and the "Average across Methods".

- "Mean ± Std" of a row: over its datasets, population std (ddof=0; ddof=1 gives 12.86 for MaPLe, not 12.20).
- "Average across Methods": mean ± population std of the prompt-tuning rows' means (E2E rows excluded);
  this gives 73.10 ± 6.24 (Table 3) and 70.51 ± 5.40 (Table 5) from the paper's own cells.
- Rows in the paper's order, then any other pair the run has (learners beyond the paper last).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pandas as pd

from benchmark.plan.spec import Selection
from benchmark.results import selection as sel
from benchmark.results.tables.layout import (
    DATASETS,
    INIT_LABELS,
    OTHER_GROUP,
    TABLE3_ROWS,
    TABLE5_ROWS,
    TITLES,
    VARIANTS,
    Dataset,
    beyond_paper,
    in_average,
    learner_name,
    row_label,
    vlsm_name,
)
from trainables.catalog import VLSMS


@dataclass(frozen=True)
class RowSpec:
    labels: tuple[str, ...]  # display labels, one per stub column
    vlsm: str
    learner: str
    variant: str
    in_average: bool  # prompt-tuning rows count towards "Average across Methods"; E2E does not


@dataclass
class Table:
    number: int
    title: str
    selection: str
    stub: tuple[str, ...]
    rows: list[RowSpec]
    datasets: list[Dataset]
    dice: pd.DataFrame  # percent; index = row position, columns = dataset keys; NaN = no selected trial
    n_trials: pd.DataFrame  # same shape: trials in the cell (any status)
    n_ok: pd.DataFrame  # same shape: finished trials
    mean: pd.Series  # over the row's datasets that have a value
    std: pd.Series  # population std over the same
    n_mean: pd.Series  # how many datasets the mean covers
    average: tuple[float, float, int] | None  # (mean, std, rows); None = the table has no such row
    chosen: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)  # the selected trial per cell
    rule: Selection = field(default_factory=Selection)  # the spec's `select` ("val")

    @property
    def header(self) -> str:
        return sel.header(self.selection, self.rule)

    def frame(self) -> pd.DataFrame:
        """The table as one labelled DataFrame: (group, dataset) columns, then Overall Mean / Std."""
        idx = pd.MultiIndex.from_tuples([r.labels for r in self.rows], names=list(self.stub))
        cols = pd.MultiIndex.from_tuples([(d.group, d.display) for d in self.datasets])
        out = pd.DataFrame(self.dice.to_numpy(), index=idx, columns=cols)
        out[("Overall", "Mean")] = self.mean.to_numpy()
        out[("Overall", "Std")] = self.std.to_numpy()
        return out


def _datasets_for(trials: pd.DataFrame) -> list[Dataset]:
    """The paper's ten columns (not-yet-run ones show "–") whenever the run has any paper dataset; a run
    on other datasets only (the embedded mini benchmark, a user's own data) shows just its own."""
    known = {d.key for d in DATASETS}
    present = set(trials["dataset"]) - {""}
    extra = sorted(present - known)
    paper = list(DATASETS) if present & known or not present else []
    return paper + [Dataset(k, k, OTHER_GROUP) for k in extra]


def _extra_pairs(trials: pd.DataFrame, known: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    known = set(known)
    pairs = {(v, l) for v, l in zip(trials["vlsm"], trials["learner"])} - known
    vlsms = VLSMS.names()
    # learners beyond the paper last, after every row the paper could have had
    return sorted(pairs, key=lambda p: (beyond_paper(p[1]), vlsms.index(p[0]) if p[0] in vlsms else len(vlsms), p))


def _build(number: int, trials: pd.DataFrame, rows: list[RowSpec], stub: tuple[str, ...], selection: str,
           rule: Selection | None, with_average: bool) -> Table:
    datasets = _datasets_for(trials)
    rule = rule or Selection()
    chosen = sel.select(trials, sel.rule_for(selection, rule))
    cell = {tuple(k): r for k, r in zip(chosen[sel.CELL_KEYS].itertuples(index=False, name=None),
                                        chosen.to_dict("records"))}
    keys = [d.key for d in datasets]
    dice = pd.DataFrame(np.nan, index=range(len(rows)), columns=keys)
    n_trials = pd.DataFrame(0, index=range(len(rows)), columns=keys)
    n_ok = pd.DataFrame(0, index=range(len(rows)), columns=keys)
    for i, r in enumerate(rows):
        for d in keys:
            c = cell.get((r.vlsm, r.learner, d, r.variant))
            if c is None:
                continue
            dice.loc[i, d] = 100.0 * float(c["test_dice"])
            n_trials.loc[i, d] = int(c["n_trials"])
            n_ok.loc[i, d] = int(c["n_ok"])
    values = dice.to_numpy()
    n_mean = pd.Series(np.isfinite(values).sum(axis=1), dtype=int)
    with np.errstate(all="ignore"):
        mean = pd.Series([np.nanmean(v) if np.isfinite(v).any() else np.nan for v in values], dtype=float)
        std = pd.Series([np.nanstd(v, ddof=0) if np.isfinite(v).any() else np.nan for v in values], dtype=float)
    average = None
    if with_average:
        means = np.array([m for m, r in zip(mean, rows) if r.in_average and math.isfinite(m)])
        average = (float(means.mean()), float(means.std(ddof=0)), len(means)) if len(means) else \
            (math.nan, math.nan, 0)
    return Table(number, TITLES[number], selection, stub, rows, datasets, dice, n_trials, n_ok, mean, std,
                 n_mean, average, chosen, rule)


def table3(trials: pd.DataFrame, selection: str = "val", rule: Selection | None = None) -> Table:
    """Paper Table 3: every (VLSM, learner) row of the paper, in its order, plus any other pair the run has."""
    t = trials[trials["variant"] == VARIANTS[3]]
    pairs = list(TABLE3_ROWS) + _extra_pairs(t, TABLE3_ROWS)
    rows = [RowSpec((vlsm_name(v), row_label(l)), v, l, VARIANTS[3], in_average(l)) for v, l in pairs]
    return _build(3, t, rows, ("Model", "Context Learner"), selection, rule, with_average=True)


def table4(trials: pd.DataFrame, selection: str = "val", rule: Selection | None = None) -> Table:
    """Paper Table 4: MaPLe (and any other learner run with `gaussian_init`), Gaussian vs 'a photo of a'."""
    t = trials[trials["variant"].isin(["gaussian_init", "default"])]
    pairs = [("clipseg", "maple")] + _extra_pairs(t[t["variant"] == "gaussian_init"], [("clipseg", "maple")])
    rows = [RowSpec((vlsm_name(v), learner_name(l), INIT_LABELS[var]), v, l, var, True)
            for v, l in pairs for var in ("gaussian_init", "default")]
    # Columns beyond the paper's ten only for datasets the ablation itself ran.
    ablated = set(t.loc[t["variant"] == "gaussian_init", "dataset"])
    t = t[t["dataset"].isin(ablated | {d.key for d in DATASETS})]
    return _build(4, t, rows, ("Model", "Context Learner", "Init"), selection, rule, with_average=False)


def table5(trials: pd.DataFrame, selection: str = "val", rule: Selection | None = None) -> Table:
    """Paper Table 5: the prompt-tuning rows trained without the new last upsampling layer."""
    t = trials[trials["variant"] == VARIANTS[5]]
    pairs = list(TABLE5_ROWS) + _extra_pairs(t, TABLE5_ROWS)
    rows = [RowSpec((vlsm_name(v), row_label(l)), v, l, VARIANTS[5], in_average(l)) for v, l in pairs]
    return _build(5, t, rows, ("Model", "Context Learner"), selection, rule, with_average=True)


TABLE_BUILDERS = {3: table3, 4: table4, 5: table5}


def has_trials(trials: pd.DataFrame, number: int) -> bool:
    """Whether the run has any trial of the variant that table `number` is about."""
    return bool((trials["variant"] == VARIANTS[number]).any())
