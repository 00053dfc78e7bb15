"""Claims only from statistics (issue 24 item 4) and rank intervals (issue 26): the report's findings follow its
tests — a clearly dominant row is claimed with its p-values, noise is not, three datasets never support a
pairwise claim — and every new output reaches the report and the tables directory."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.results import ranking
from benchmark.results import records as R
from benchmark.results import tables as T
from benchmark.results.run_dir import RunDir

REPO = Path(__file__).resolve().parents[3]
T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
LEARNERS = ("coop", "vpt", "maple", "shared_separate")
DATASETS = tuple(d.key for d in T.DATASETS[:8])


def _trials(dice: np.ndarray, datasets=DATASETS, variant: str = "default") -> pd.DataFrame:
    """One trial per cell; dice[l, d] is learner l's test Dice (0..1) on dataset d."""
    rows = []
    for li, learner in enumerate(LEARNERS):
        for di, d in enumerate(datasets):
            rows.append({"spec": "s", "vlsm": "clipseg", "learner": learner, "dataset": d, "variant": variant,
                         "cell_id": f"clipseg_{learner}_{d}", "trial_index": 0, "trial_id": f"{learner}-{d}",
                         "status": "ok", "objective": 0.1, "test_dice": float(dice[li, di]), "reseed": None})
    return pd.DataFrame(rows)


def _findings(dice, datasets=DATASETS) -> tuple[ranking.Ranking, str]:
    rk = ranking.section(T.table3(_trials(dice, datasets)))
    return rk, "\n".join(ranking.findings(rk))


def test_a_dominant_row_is_claimed_with_its_p_values():
    rng = np.random.default_rng(0)
    # learner quality coop < vpt < maple < shared_separate on every dataset, by 10 points
    dice = 0.3 + 0.1 * np.arange(4)[:, None] + rng.uniform(0, 0.02, (1, len(DATASETS)))
    rk, text = _findings(dice)
    assert rk.friedman.p < 0.05
    assert "do not all rank alike over the 8 datasets (Friedman" in text
    assert "CLIPSeg · Shared Separate scores higher than CLIPSeg · CoOp: by 30.00 Dice points" in text
    assert "Holm-adjusted p = 0.047" in text  # 6 pairs x 2/2^8
    assert "Best average rank (descriptive): CLIPSeg · Shared Separate (1.00, 95% bootstrap interval [1.00, 1.00]" in text
    assert "ranks better than CLIPSeg · CoOp by the Nemenyi post-hoc test" in text
    assert "does not reject" not in text


def test_noise_is_not_claimed():
    rng = np.random.default_rng(5)
    dice = rng.uniform(0.4, 0.6, (4, len(DATASETS)))
    rk, text = _findings(dice)
    assert rk.friedman.p >= 0.05  # this seed's noise: the test does not reject
    assert "the Friedman test does not reject that all 4 rows rank alike" in text
    assert "support no row being better than another" in text
    assert "scores higher than" not in text and "ranks better than" not in text


def test_three_datasets_never_support_a_pairwise_claim():
    dice = 0.3 + 0.1 * np.arange(4)[:, None] + np.zeros((1, 3))
    rk, text = _findings(dice, DATASETS[:3])
    assert rk.friedman.p < 0.05  # a perfect order on 3 datasets does reject the omnibus test ...
    # ... but no pair can be shown to differ
    assert "With 3 datasets no pairwise test can reach p < 0.05 (the smallest two-sided Wilcoxon p is 2/2^3 = 0.25)" \
        in text
    assert "scores higher than" not in text


def test_rank_intervals_bootstrap_datasets_and_seeds():
    frame = pd.DataFrame({"a": [3.0, 3.0, 1.0], "b": [2.0, 2.0, 2.0], "c": [1.0, 1.0, 3.0]}, index=["x", "y", "z"])
    ci = ranking.rank_intervals(frame)
    assert ci.loc["a", "avg_rank"] == pytest.approx(5 / 3)
    assert (ci["lo"] <= ci["avg_rank"]).all() and (ci["avg_rank"] <= ci["hi"]).all()
    assert ci.loc["a", "lo"] == 1.0 and ci.loc["a", "hi"] == 3.0  # resamples of {x, y, z} reach both extremes
    assert ci.loc["b", "lo"] == ci.loc["b", "hi"] == 2.0  # the same rank everywhere: no spread
    assert ranking.rank_intervals(frame).equals(ci)  # seeded
    # with seed reruns, b's score on x ranges over values above and below a's: its rank there varies
    seeds = {("x", "b"): [1.0, 4.0]}
    assert ranking.rank_intervals(frame, seeds).loc["b", "lo"] < 2.0


def test_ablation_findings_pair_each_variant_with_table3():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 0.8, (4, len(DATASETS)))
    trials = pd.concat([_trials(base), _trials(base - 0.05, variant="no_upsampler")], ignore_index=True)
    tables = {3: T.table3(trials), 5: T.table5(trials)}
    text = "\n".join(ranking.ablation_findings(tables))
    assert "Table 5, CLIPSeg · Maple, without vs with the learnable upsampler: -5.00 Dice points on average over " \
           "8 dataset(s), lower on 8 of 8; significant (Holm-adjusted p = 0.031)" in text
    tables = {3: T.table3(trials[trials["dataset"].isin(DATASETS[:3])]),
              5: T.table5(trials[trials["dataset"].isin(DATASETS[:3])])}
    text = "\n".join(ranking.ablation_findings(tables))
    assert "not significant (Wilcoxon p = 0.250" in text and "with 3 datasets p cannot go below 0.25" in text


def _write_run(path: Path) -> Path:
    rng = np.random.default_rng(2)
    for li, learner in enumerate(LEARNERS):
        for d in DATASETS[:3]:
            rows = []
            for i in range(6):
                cell = dict(vlsm="clipseg", learner=learner, dataset=d, variant="default")
                rows.append(R.trial_row(
                    spec="s", cell=cell, cell_id=f"clipseg_{learner}_{d}", trial_index=i, trial_id=f"{learner}{d}{i}",
                    hp={"lr": float(10 ** rng.uniform(-5, -2.5)), "weight_decay": 1e-4, "prompt_depth": 1 + i % 3,
                        "intermediate_dim": 32, "use_lora": False, "shared_dim": 32},
                    result={"objective": float(rng.uniform()), "test_dice": 0.3 + 0.1 * li + 0.01 * i, "status": "ok",
                            "seconds": 60.0, "trainable_params": 1000 * (li + 1)},
                    error=None, prov={"git_sha": "feedbeef", "git_dirty": False}, started_at=T0, finished_at=T0))
            R.write_rows(rows, RunDir(path).cell_file(f"clipseg_{learner}_{d}"))
    return path


def test_cli_writes_findings_budget_efficiency_importance(tmp_path):
    run = _write_run(tmp_path / "run")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "benchmark", "tables", str(run), "--out", str(out),
                           "--price-per-hour", "3"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in ("budget.csv", "budget_curves.png", "efficiency.csv", "dice_vs_cost.png", "importance.csv",
                 "importance_heatmap.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert report.index("## Findings") < report.index("## Search space")
    findings = report.split("## Findings")[1].split("\n## ")[0]
    assert "no pairwise test can reach p < 0.05" in findings and "Budget" in findings
    assert "| Row | Average rank | 95% interval | Mean Dice (%) |" in report
    for section in ("## Budget curves", "## Efficiency and cost", "## Hyperparameter importance"):
        assert section in report
    assert "--price-per-hour 3" in report and "Cost per cell" in report
    assert "Estimated for 12 of 12 cells" in report
