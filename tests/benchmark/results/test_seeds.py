"""Tables and report of a run with reruns over seeds (spec select.reseed): the selected trial beside the mean ±
std over seeds, counts and figures of the search only, and the ranking section (average ranks, Friedman,
Wilcoxon-Holm, CD diagram)."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from benchmark.results import records as R
from benchmark.results import seeds as SD
from benchmark.results import tables as T
from benchmark.results.run_dir import RunDir

REPO = Path(__file__).resolve().parents[3]
T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
LEARNERS = ("coop", "vpt", "maple", "shared_separate")
DATASETS = ("kvasir", "busi", "isic", "dfu", "camus", "bkai", "clinicdb")
SEARCH = 3
K = 2


def _row(learner, dataset, i, dice, objective, *, seed=None, reseed=None):
    cell = dict(vlsm="clipseg", learner=learner, dataset=dataset, variant="default")
    return R.trial_row(spec="seeds", cell=cell, cell_id=f"clipseg_{learner}_{dataset}", trial_index=i,
                       trial_id=f"{learner}-{dataset}-{i}", hp={"lr": 1e-3 * (i + 1), "prompt_depth": 3 + i,
                                                                "weight_decay": 1e-4},
                       result={"objective": objective, "test_dice": dice, "status": "ok"}, error=None,
                       prov={"git_sha": "feedbeef", "git_dirty": False}, started_at=T0, finished_at=T0,
                       seed=seed, reseed=reseed)


def _write_run(path: Path, with_reseeds: bool = True) -> Path:
    """Four learners on seven datasets; trial #1 of every cell has the lowest objective (is selected); its
    reseeds score the selected dice + offsets. Reseed rows are made the *best* by objective and test Dice,
    so a table that let them compete would show them."""
    rng = np.random.default_rng(0)
    for li, learner in enumerate(LEARNERS):
        for d in DATASETS:
            base = 0.4 + 0.1 * li + rng.uniform(0, 0.05)
            rows = [_row(learner, d, i, base + (0.02 if i == 1 else 0.0), 0.5 if i != 1 else 0.3)
                    for i in range(SEARCH)]
            if with_reseeds:
                rows += [_row(learner, d, SEARCH + k - 1, base + 0.02 + 0.01 * k, 0.01, seed=12345 + k,
                              reseed={"k": k, "of": 1}) for k in range(1, K + 1)]
            R.write_rows(rows, RunDir(path).cell_file(f"clipseg_{learner}_{d}"))
    return path


def test_selection_counts_and_seed_statistics(tmp_path):
    trials = T.read_trials(_write_run(tmp_path / "run"))
    assert len(trials) == len(LEARNERS) * len(DATASETS) * (SEARCH + K)
    table = T.table3(trials)
    maple = next(i for i, r in enumerate(table.rows) if r.learner == "maple")
    # the selected trial is #1 of the search, never a (better-scoring) reseed row; counts are the search's
    assert set(table.chosen["trial_index"]) == {1}
    assert table.n_trials.loc[maple, "kvasir"] == SEARCH
    st = SD.seed_table(table, trials)
    assert st is not None
    sel = table.dice.loc[maple, "kvasir"]
    values = st.values[(maple, "kvasir")]
    assert values == pytest.approx([sel, sel + 1.0, sel + 2.0])
    assert st.mean.loc[maple, "kvasir"] == pytest.approx(sel + 1.0)
    assert st.std.loc[maple, "kvasir"] == pytest.approx(1.0)  # sample std of (x, x+1, x+2)
    assert st.n.loc[maple, "kvasir"] == 1 + K
    md = SD.render(st, "md")
    assert f"{T.fmt(sel)} / {T.fmt(sel + 1.0)} ± 1.00 (3)" in md
    csv = SD.render(st, "csv")
    assert "seed_mean" in csv.splitlines()[0] and SD.render(st, "tex").count(r"$\pm$") >= len(DATASETS)


def test_best_test_rule_shows_no_seed_statistics_for_a_trial_that_was_not_rerun(tmp_path):
    trials = T.read_trials(_write_run(tmp_path / "run"))
    # best_test picks trial #1 here as well (highest search test Dice): same trial, seeds apply
    assert SD.seed_table(T.table3(trials, "best_test"), trials) is not None
    # a run whose reseeds reran trial #0 (as if another rule had selected it) shows none under `val`
    trials.loc[trials["reseed"].notna(), "reseed_of"] = 0
    assert SD.seed_table(T.table3(trials), trials) is None


def test_no_reseeds_no_seed_table(tmp_path):
    trials = T.read_trials(_write_run(tmp_path / "run", with_reseeds=False))
    assert SD.seed_table(T.table3(trials), trials) is None


def test_cli_writes_seed_tables_ranking_and_cd_diagram(tmp_path):
    run = _write_run(tmp_path / "run")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "benchmark", "tables", str(run), "--out", str(out), "--format", "all"], cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    for fmt in ("md", "csv", "tex"):
        assert (out / f"table3_seeds.{fmt}").is_file()
    report = (out / "report.md").read_text()
    assert "Table 3 over seeds." in report
    assert f"{len(LEARNERS) * len(DATASETS) * K} of them reruns of a selected configuration" in report
    section = report.split("## Ranking across datasets (Table 3)")[1].split("\n## ")[0]
    assert "mean test Dice (%) over seeds" in section
    # Learner quality is ordered coop < vpt < maple < shared_separate on every dataset: exact ranks 4..1.
    assert "| CLIPSeg · Shared Separate | 1.00 |" in section and "| CLIPSeg · CoOp | 4.00 |" in section
    assert "Friedman test" in section and "Holm" in section
    # seven datasets: the pairwise table is there (smallest p 2/2^7 < 0.05)
    assert "| A | B | mean A − B |" in section
    assert (out / "cd_diagram.png").is_file() and "![critical difference diagram](cd_diagram.png)" in section
    # counts are the search's
    assert (out / "table3_trials.md").read_text().count(f"| {SEARCH} ") >= len(DATASETS)
