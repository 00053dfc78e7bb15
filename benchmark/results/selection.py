"""Which trial of a cell's search stands for the cell in a table: the one rule of `run_dir.select`, on frames.

A cell (VLSM × learner × dataset × variant) runs a search of N trials; the tables report one test Dice per
cell. Two rules, both kept because they answer different questions:

- `val`: the spec's `select` rule, the one selected.parquet and `predict` use (by default the trial with the
  lowest last-epoch validation loss, the quantity TPE minimised) → its test Dice. The test set plays no part
  in the choice: the principled rule.
- `best_test`: the highest test Dice of the cell's trials. The paper's "best dice score on each dataset
  after searching 20 times" reads like this (nothing in the original code selects a trial; the numbers
  were apparently read off the tracker). It is optimistic: it selects on the test set.

Only finished trials (`status == "ok"`) are candidates; the counts of all trials and of finished ones are
kept so a table can say how much each number rests on. Pure pandas, no torch.
"""

from __future__ import annotations

import pandas as pd

from benchmark.plan.spec import Selection
from benchmark.results.run_dir import select as select_rows
from trainables.protocol import STATUS_OK

CELL_KEYS = ["vlsm", "learner", "dataset", "variant"]
NAMES = ("val", "best_test")
BEST_TEST = Selection(by="test_dice", mode="max", report="test_dice")

_DEFAULT_VAL_HEADER = ("selection: per cell, the trial with the best validation objective "
                       "(lowest last-epoch val loss) → its test Dice")


def rule_for(name: str, spec_rule: Selection | None = None) -> Selection:
    """`val` -> the spec's rule (default: lowest objective); `best_test` -> the highest test Dice."""
    if name == "val":
        return spec_rule or Selection()
    if name == "best_test":
        return BEST_TEST
    raise ValueError(f"unknown selection rule {name!r}; allowed: {', '.join(NAMES)}")


def header(name: str, spec_rule: Selection | None = None) -> str:
    """The sentence a table header carries."""
    rule = rule_for(name, spec_rule)
    if name == "best_test":
        return ("selection: per cell, the best test Dice of the trials "
                "(the paper's apparent rule; optimistic, it selects on the test set)")
    if rule == Selection():
        return _DEFAULT_VAL_HEADER
    best = "lowest" if rule.mode == "min" else "highest"
    return f"selection: per cell, the trial with the {best} {rule.by} → its {rule.report}"


def search_only(trials: pd.DataFrame) -> pd.DataFrame:
    """The search's trials: without the reruns of a selected configuration with further seeds (column
    `reseed` set; spec select.reseed). Those never compete for selection and are not counted as trials."""
    if "reseed" not in trials.columns:
        return trials
    return trials[pd.to_numeric(trials["reseed"], errors="coerce").fillna(0) <= 0]


def select(trials: pd.DataFrame, rule: Selection) -> pd.DataFrame:
    """One row per cell present in `trials`: the chosen trial's columns plus `n_trials` and `n_ok` (of the
    search; reseed rows are left out, see `search_only`).

    Cells with no usable trial keep a row with `test_dice` NaN, so a partial run still yields its counts.
    """
    trials = search_only(trials)
    out = []
    if trials.empty:
        return pd.DataFrame(columns=CELL_KEYS + ["test_dice", "n_trials", "n_ok"])
    for key, cell in trials.groupby(CELL_KEYS, sort=False, dropna=False):
        candidates = cell.reset_index(drop=True)
        recs = candidates.to_dict("records")
        for i, r in enumerate(recs):
            r["_pos"] = i
            r.setdefault("trial_index", i)
        best = select_rows(recs, rule)
        row: dict = dict(zip(CELL_KEYS, key))
        if best is not None:
            row.update({k: v for k, v in candidates.iloc[best["_pos"]].items() if k not in row})
        else:
            row["test_dice"] = float("nan")
        row["n_trials"] = len(cell)
        row["n_ok"] = int((cell["status"] == STATUS_OK).sum())
        out.append(row)
    return pd.DataFrame(out)
