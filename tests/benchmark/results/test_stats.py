"""benchmark.results.stats: average ranks, Friedman, Wilcoxon-Holm and the CD diagram, against hand-computed values
and scipy's own tests (issue 19, item 4: the statistics alone, no sweep)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from benchmark.results import stats as S


def _table(values, learners=("maple", "coop", "vpt")):
    return pd.DataFrame(values, index=[f"ds{i}" for i in range(len(values))], columns=list(learners))


def test_average_ranks_with_ties_and_incomplete_datasets_left_out():
    t = _table([[0.9, 0.5, 0.7], [0.8, 0.8, 0.6], [0.7, 0.6, np.nan]])
    r = S.ranks(t)
    assert r.loc["ds1"].tolist() == [1.5, 1.5, 3.0]  # a tie shares ranks 1 and 2
    assert "ds2" not in r.index  # no score for vpt: not a complete block
    assert S.average_ranks(t).to_dict() == {"maple": 1.25, "coop": 2.25, "vpt": 2.5}
    assert S.average_ranks(t, higher_is_better=False)["maple"] == 2.75


def test_friedman_matches_the_formula_and_scipy():
    # the same order on 4 datasets: ranks 1, 2, 3 each time -> chi2 = 12*4/(3*4) * (1+4+9) - 3*4*4 = 8
    t = _table([[0.9, 0.5, 0.1], [0.8, 0.6, 0.2], [0.7, 0.4, 0.3], [0.95, 0.9, 0.85]])
    f = S.friedman(t)
    assert (f.n_datasets, f.n_learners) == (4, 3) and f.chi2 == pytest.approx(8.0)
    assert f.p == pytest.approx(math.exp(-4.0))  # chi2(2) survival function is exp(-x/2)
    assert math.isinf(f.f) and f.p_f == 0.0  # perfect agreement: Iman-Davenport's F is unbounded
    from scipy.stats import friedmanchisquare

    rng = np.random.default_rng(0)
    for _ in range(20):
        t = _table(np.round(rng.uniform(0, 1, (7, 4)), 1), ("a", "b", "c", "d"))  # rounding makes ties
        ours, theirs = S.friedman(t), friedmanchisquare(*[t[c] for c in t.columns])
        assert ours.chi2 == pytest.approx(theirs.statistic) and ours.p == pytest.approx(theirs.pvalue)
        # the formula this module computed itself before it called scipy (Demšar, tie-corrected)
        assert ours.chi2 == pytest.approx(_tie_corrected_chi2(S.ranks(t)))
    with pytest.raises(ValueError, match="needs 3\\+ learners"):
        S.friedman(t[["a", "b"]])


def _tie_corrected_chi2(r: pd.DataFrame) -> float:
    n, k = r.shape
    R = r.mean(axis=0).to_numpy()
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(R ** 2) - k * (k + 1) ** 2 / 4)
    ties = sum(float((c ** 3 - c).sum()) for c in (np.unique(row, return_counts=True)[1] for row in r.to_numpy()))
    return chi2 / (1 - ties / (n * k * (k * k - 1)))


def test_holm_adjustment():
    assert S.holm(np.array([0.01, 0.04, 0.03])).tolist() == pytest.approx([0.03, 0.06, 0.06])
    assert S.holm(np.array([0.5, 0.9])).tolist() == pytest.approx([1.0, 1.0])


def test_wilcoxon_holm_pairs_and_the_floor_of_small_n():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.3, 0.9, 10)
    t = _table(np.stack([base + 0.05, base, base + rng.normal(0, 0.001, 10)], axis=1))
    w = S.wilcoxon_holm(t)
    assert list(zip(w["a"], w["b"])) == [("maple", "coop"), ("maple", "vpt"), ("coop", "vpt")]
    first = w.iloc[0]
    assert first["n"] == 10 and first["mean_diff"] == pytest.approx(0.05) and first["p"] == pytest.approx(2 / 2 ** 10)
    assert bool(first["significant"]) and not bool(w.iloc[2]["significant"])
    assert (w["p_holm"] >= w["p"]).all()
    # three datasets (the mini benchmark): even a learner better everywhere cannot reach p < 0.25
    small = S.wilcoxon_holm(t.iloc[:3])
    assert small["p"].min() == pytest.approx(0.25) and not small["significant"].any()
    same = S.wilcoxon_holm(_table([[0.5, 0.5, 0.4], [0.6, 0.6, 0.5]]))
    assert same.iloc[0]["p"] == 1.0


def test_critical_difference_matches_demsar_and_cliques():
    # Demšar (2006), Table 5(a): q_0.05 = 2.343 for k = 3, 2.569 for k = 4
    assert S.critical_difference(3, 1) == pytest.approx(2.343 * math.sqrt(3 * 4 / 6), abs=1e-3)
    assert S.critical_difference(4, 10) == pytest.approx(2.569 * math.sqrt(4 * 5 / 60), abs=1e-3)
    r = pd.Series({"a": 1.0, "b": 1.4, "c": 2.6, "d": 3.0})
    assert S.cliques(r, cd=0.5) == [["a", "b"], ["c", "d"]]
    assert S.cliques(r, cd=2.5) == [["a", "b", "c", "d"]]
    assert S.cliques(r, cd=0.1) == []


def test_cd_diagram_writes_a_png(tmp_path):
    r = pd.Series({"Maple": 1.3, "Shared Separate": 1.9, "VPT": 3.1, "CoOp": 3.7, "CoCoOp": 5.0})
    path = S.cd_diagram(r, S.critical_difference(5, 10), tmp_path / "cd.png", title="Test Dice, 10 datasets")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 8_000
