"""Budget curves (issue 26): the exact expectation over n-subsets against brute-force enumeration, the value at
n = N against the tables' selected trial, what is monotone (the selection metric) and what need not be (test
Dice)."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from benchmark.plan.spec import Selection
from benchmark.results import budget as B
from benchmark.results import selection as sel
from benchmark.results.run_dir import select as select_rows


def _cell(objectives, dice, *, learner="coop", dataset="d0", status=None, vlsm="clipseg"):
    n = len(objectives)
    return pd.DataFrame({"vlsm": vlsm, "learner": learner, "dataset": dataset, "variant": "default",
                         "trial_index": range(n), "status": status or ["ok"] * n,
                         "objective": objectives, "test_dice": dice, "reseed": [None] * n})


def _brute_force(cell: pd.DataFrame, rule: Selection, n: int) -> tuple[float, float]:
    """Mean over every n-subset of the candidates of (test Dice %, metric) of the trial `select` picks."""
    recs = [r for r in cell.to_dict("records") if r["status"] == "ok"]
    picks = [select_rows(list(sub), rule) for sub in combinations(recs, n)]
    return (float(np.mean([p["test_dice"] * 100 for p in picks])), float(np.mean([p[rule.by] for p in picks])))


@pytest.mark.parametrize("mode", ["min", "max"])
def test_exact_curve_equals_brute_force_enumeration_with_ties(mode):
    rng = np.random.default_rng(7)
    rule = Selection(by="objective", mode=mode)
    for _ in range(25):
        n_total = int(rng.integers(1, 8))
        # few distinct objective values: ties are common, and `select` breaks them by trial index
        cell = _cell(rng.integers(0, 3, n_total).astype(float), rng.uniform(0, 1, n_total))
        curves = B.cell_curves(cell, rule)
        assert list(curves["n"]) == list(range(1, n_total + 1))
        for n in range(1, n_total + 1):
            dice, metric = _brute_force(cell, rule, n)
            row = curves[curves["n"] == n].iloc[0]
            assert row["expected_test_dice"] == pytest.approx(dice)
            assert row["expected_objective"] == pytest.approx(metric)


def test_failed_trials_are_no_candidates_and_n_equals_N_is_the_selected_trial():
    cell = _cell([0.2, 0.1, 0.5, 0.3], [0.6, 0.9, 0.4, 0.7], status=["ok", "error", "ok", "ok"])
    curves = B.cell_curves(cell, Selection())
    assert curves["N"].iloc[0] == 3  # the failed trial is no draw the rule could choose
    chosen = sel.select(cell, Selection())
    assert curves["expected_test_dice"].iloc[-1] == pytest.approx(chosen["test_dice"].iloc[0] * 100)
    assert curves["expected_test_dice"].iloc[0] == pytest.approx(np.mean([0.6, 0.4, 0.7]) * 100)


def test_weights_are_a_distribution_over_ranks():
    for n_total in range(1, 9):
        for n in range(1, n_total + 1):
            w = B.best_of_n_weights(n_total, n)
            assert w.sum() == pytest.approx(1.0) and (np.diff(w) <= 1e-15).all()  # better ranks more likely
    with pytest.raises(ValueError, match="1..3"):
        B.best_of_n_weights(3, 4)


def test_selection_metric_improves_monotonically_but_test_dice_need_not():
    rng = np.random.default_rng(3)
    for _ in range(20):
        cell = _cell(rng.uniform(0, 1, 6), rng.uniform(0, 1, 6))
        metric = B.cell_curves(cell, Selection())["expected_objective"].to_numpy()
        assert (np.diff(metric) <= 1e-12).all()  # expected best-of-n objective never gets worse
    # N = 2, the validation-best trial is the worse one on test: n = 1 gives the mean, n = 2 the lower one
    cell = _cell([0.1, 0.2], [0.5, 0.9])
    dice = B.cell_curves(cell, Selection())["expected_test_dice"].to_list()
    assert dice == pytest.approx([70.0, 50.0])
    assert not B.summary(cell, Selection())["monotone"].iloc[0]


def test_learner_means_plateau_and_csv(tmp_path):
    rule = Selection()
    a = _cell([0.3, 0.1, 0.2], [0.5, 0.8, 0.6], dataset="d0")
    b = _cell([0.1, 0.2, 0.3], [0.7, 0.7, 0.1], dataset="d1")
    e2e = _cell([0.1], [0.9], learner="e2e")
    trials = pd.concat([a, b, e2e], ignore_index=True)
    curves = B.learner_curves(B.cell_curves(trials, rule))
    coop = curves[curves["learner"] == "coop"].set_index("n")["expected_test_dice"]
    per = B.cell_curves(trials, rule)
    for n in (1, 2, 3):
        assert coop[n] == pytest.approx(per[(per["learner"] == "coop") & (per["n"] == n)]["expected_test_dice"].mean())
    assert B.plateau(pd.Series([40.0, 59.5, 60.0], index=[1, 2, 3])) == 2
    assert B.plateau(pd.Series([59.5, 50.0, 60.0], index=[1, 2, 3])) == 3  # must *stay* within the tolerance
    summ = B.summary(trials, rule)
    assert list(summ["learner"]) == ["coop"]  # a single-trial row has no curve
    lines, files, _ = B.write(trials, rule, tmp_path)
    assert {f.name for f in files} == {B.CSV, B.FIGURE}
    csv = pd.read_csv(tmp_path / B.CSV)
    assert set(csv["level"]) == {"cell", "mean over datasets"}
    assert any("| CLIPSeg | CoOp | default | 3 | 2 |" in line for line in lines)
    assert (tmp_path / B.FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
