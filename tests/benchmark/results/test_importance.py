"""Hyperparameter importance (issue 26): fANOVA finds a known important parameter, cells with too few trials
are marked, the study is rebuilt from Parquet rows when the run has no optuna.db, or read from it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from benchmark.plan import search_space as SS
from benchmark.plan.spec import Selection
from benchmark.results import importance as I


def _rows(n: int, rng, learner: str = "maple", dataset: str = "d0") -> pd.DataFrame:
    """Trials whose objective depends on the learning rate alone (the others are noise-free passengers)."""
    rows = []
    for i in range(n):
        lr = float(10 ** rng.uniform(-5, math.log10(5e-3)))
        rows.append({"vlsm": "clipseg", "learner": learner, "dataset": dataset, "variant": "default",
                     "cell_id": f"clipseg_{learner}_{dataset}", "trial_index": i, "status": "ok", "reseed": None,
                     "hp_lr": lr, "hp_weight_decay": float(10 ** rng.uniform(-5, -2)),
                     "hp_prompt_depth": int(rng.integers(1, 12)), "hp_intermediate_dim": int(rng.choice([32, 64])),
                     "hp_use_lora": bool(rng.integers(0, 2)),
                     "objective": (math.log10(lr) + 3.5) ** 2 + rng.normal(0, 1e-3)})
    return pd.DataFrame(rows)


def test_fanova_finds_the_parameter_that_drives_the_objective():
    rng = np.random.default_rng(0)
    trials = _rows(40, rng)
    study = I.rebuild_study(trials, SS.params_for("maple"), Selection())
    assert len(study.trials) == 40 and study.direction.name == "MINIMIZE"
    assert isinstance(study.trials[0].params["use_lora"], bool)  # a boolean choice stays a boolean
    status, imp = I.cell_importance(study)
    assert status == "ok"
    assert sum(imp.values()) == pytest.approx(1.0)
    assert max(imp, key=imp.get) == "lr" and imp["lr"] > 0.7
    # regenerates: the evaluator's seed is fixed
    assert I.cell_importance(study)[1] == imp


def test_cells_with_too_few_trials_or_varying_params_are_marked_not_guessed():
    rng = np.random.default_rng(1)
    few = I.rebuild_study(_rows(4, rng), SS.params_for("maple"), Selection())
    assert I.cell_importance(few) == ("too few trials (4 finished < 5)", {})
    same = _rows(8, rng)
    for c in ("hp_weight_decay", "hp_prompt_depth", "hp_intermediate_dim", "hp_use_lora"):
        same[c] = same[c].iloc[0]
    status, imp = I.cell_importance(I.rebuild_study(same, SS.params_for("maple"), Selection()))
    assert status.startswith("fewer than 2 varying parameters") and imp == {}


def test_table_marks_cells_skips_e2e_and_reads_failed_trials_out():
    rng = np.random.default_rng(2)
    good = _rows(12, rng, dataset="d0")
    good.loc[0, "status"] = "error"  # no value: not a complete trial
    small = _rows(3, rng, dataset="d1")
    e2e = _rows(1, rng, learner="e2e")
    table = I.table(pd.concat([good, small, e2e], ignore_index=True), Selection())
    assert "e2e" not in set(table["learner"])  # not searched: no study
    d0 = table[table["dataset"] == "d0"]
    assert set(d0["status"]) == {"ok"} and d0["trials"].iloc[0] == 11
    assert d0["importance"].sum() == pytest.approx(1.0) and d0["source"].iloc[0] == "rebuilt from Parquet"
    d1 = table[table["dataset"] == "d1"]
    assert len(d1) == 1 and d1["status"].iloc[0].startswith("too few trials") and math.isnan(d1["importance"].iloc[0])
    lines = I.report_lines(table, None)
    assert any("Estimated for 1 of 2 cells" in line for line in lines)
    assert I.findings(table)[0].startswith("- Hyperparameter importance (fANOVA, descriptive, 1 of 2 cells")


def test_the_runs_own_optuna_study_is_used_when_present(tmp_path):
    import optuna

    from benchmark.results.run_dir import RunDir

    rng = np.random.default_rng(3)
    trials = _rows(10, rng)
    run = tmp_path / "run"
    run.mkdir()
    storage = f"sqlite:///{RunDir(run).optuna_db}"
    stored = optuna.create_study(study_name="clipseg_maple_d0", storage=storage)
    # the stored study: only two parameters, prompt depth deciding the objective
    dists = {"prompt_depth": optuna.distributions.IntDistribution(1, 11),
             "lr": optuna.distributions.FloatDistribution(1e-5, 5e-3, log=True)}
    for i in range(10):
        depth = int(rng.integers(1, 12))
        stored.add_trial(optuna.trial.create_trial(params={"prompt_depth": depth, "lr": 1e-4 * (1 + i % 3)},
                                                   distributions=dists, value=float(depth)))
    table = I.table(trials, Selection(), run)
    assert set(table["source"]) == {"optuna.db"}
    assert set(table["param"]) == {"prompt_depth", "lr"}
    top = table.sort_values("importance").iloc[-1]
    assert top["param"] == "prompt_depth"


def test_heatmap_only_of_estimated_cells(tmp_path):
    rng = np.random.default_rng(4)
    table = I.table(pd.concat([_rows(12, rng, dataset="d0"), _rows(2, rng, dataset="d1")], ignore_index=True),
                    Selection())
    path = I.figure(table, tmp_path / I.FIGURE)
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert I.figure(table[table["status"] != "ok"], tmp_path / "none.png") is None


def test_the_runs_optuna_db_is_opened_once_for_all_its_studies(tmp_path, monkeypatch):
    """A run has one study per searched cell (39 in mini); opening the storage per study re-ran Optuna's
    schema check each time (about 2 s of `tables` on the mini run). Every study is still read."""
    import optuna

    from benchmark.results.run_dir import RunDir

    run = tmp_path / "run"
    run.mkdir()
    url = f"sqlite:///{RunDir(run).optuna_db}"
    dist = {"lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)}
    for cell in ("clipseg_coop_d0", "clipseg_coop_d1", "clipseg_vpt_d0"):
        study = optuna.create_study(study_name=cell, storage=url)
        study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3}, distributions=dist, value=1.0))

    opened = []

    class Counted(optuna.storages.RDBStorage):
        def __init__(self, *args, **kwargs):
            opened.append(args[0] if args else kwargs.get("url"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", Counted)
    studies = I.stored_studies(run)
    assert sorted(studies) == ["clipseg_coop_d0", "clipseg_coop_d1", "clipseg_vpt_d0"]
    assert all(len(s.trials) == 1 for s in studies.values())
    assert len(opened) == 1
