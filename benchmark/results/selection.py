"""Which trial of a cell's search stands for the cell in a table.

A cell (VLSM × learner × dataset × variant) runs a search of N trials; the tables report one test Dice per
cell. Two rules, both kept because they answer different questions:

- `val`: the trial with the best search objective (by default the lowest last-epoch validation loss, the
  quantity TPE minimised) → its test Dice. The test set plays no part in the choice: the principled rule.
- `best_test`: the highest test Dice of the cell's trials. The paper's "best dice score on each dataset
  after searching 20 times" reads like this (nothing in the original code selects a trial; the numbers
  were apparently read off the tracker). It is optimistic: it selects on the test set.

Only finished trials (`status == "ok"`) with a finite test Dice are candidates; the counts of all trials
and of finished ones are kept so a table can say how much each number rests on. Pure pandas, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

CELL_KEYS = ["vlsm", "learner", "dataset", "variant"]


@dataclass(frozen=True)
class Rule:
    name: str
    header: str  # the sentence a table header carries


RULES: dict[str, Rule] = {
    "val": Rule("val", "selection: per cell, the trial with the best validation objective "
                       "(lowest last-epoch val loss) → its test Dice"),
    "best_test": Rule("best_test", "selection: per cell, the best test Dice of the trials "
                                   "(the paper's apparent rule; optimistic, it selects on the test set)"),
}


def rule(name: str) -> Rule:
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown selection rule {name!r}; allowed: {', '.join(RULES)}") from None


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def select(trials: pd.DataFrame, how: str = "val", mode: str = "min") -> pd.DataFrame:
    """One row per cell present in `trials`: the chosen trial's columns plus `n_trials` and `n_ok`.

    `mode` is the direction of `objective` (min for a loss). Cells with no usable trial keep a row with
    `test_dice` NaN, so a partial run still yields its counts. Ties go to the lower `trial_index` so the
    choice does not depend on row order.
    """
    rule(how)
    if mode not in ("min", "max"):
        raise ValueError(f"objective mode must be 'min' or 'max', got {mode!r}")
    out = []
    if trials.empty:
        return pd.DataFrame(columns=CELL_KEYS + ["test_dice", "n_trials", "n_ok"])
    for key, cell in trials.groupby(CELL_KEYS, sort=False, dropna=False):
        ok = cell[(cell["status"] == "ok") & cell["test_dice"].map(_finite)]
        row: dict = dict(zip(CELL_KEYS, key))
        chosen = None
        if how == "val":
            ok = ok[ok["objective"].map(_finite)] if "objective" in ok else ok.iloc[0:0]
            if len(ok):
                by = ["objective"] + (["trial_index"] if "trial_index" in ok else [])
                chosen = ok.sort_values(by, ascending=[mode == "min"] + [True] * (len(by) - 1),
                                        kind="stable").iloc[0]
        elif len(ok):
            by = ["test_dice"] + (["trial_index"] if "trial_index" in ok else [])
            chosen = ok.sort_values(by, ascending=[False] + [True] * (len(by) - 1), kind="stable").iloc[0]
        if chosen is not None:
            row.update({k: v for k, v in chosen.items() if k not in row})
        else:
            row["test_dice"] = float("nan")
        row["n_trials"] = len(cell)
        row["n_ok"] = int((cell["status"] == "ok").sum())
        out.append(row)
    return pd.DataFrame(out)
