"""`tunevlseg compare RUN REF`: identical runs, runs that differ within each cell's noise, a cell beyond it,
and bad input (exit 0 / 0 / 1 / 2); the committed results/mini against itself is identical."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.results import compare as C
from benchmark.results import records as R
from benchmark.results.run_dir import RunDir

REPO = Path(__file__).resolve().parents[3]
T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
LEARNERS = ("coop", "vpt", "maple")
DATASETS = ("mini_polyp", "mini_skin", "mini_echo")
# test Dice of trials 0, 1, 2 of every cell (trial 1 has the lowest objective: it is selected); spread ~5 points
BASE = (0.50, 0.60, 0.55)


def _write_run(path: Path, *, spec: str = "mini", shift: dict | None = None, hp_shift: float = 0.0) -> Path:
    """A run of 3 learners x 3 datasets x 3 trials; `shift` adds to one trial's test Dice:
    {(learner, dataset, trial_index): delta}."""
    shift = shift or {}
    cells = {}
    for li, learner in enumerate(LEARNERS):
        for d in DATASETS:
            cid = f"clipseg_{learner}_{d.replace('_', '-')}"
            cells[cid] = {"trials": 3, "seed": 12345}
            cell = dict(vlsm="clipseg", learner=learner, dataset=d, variant="default")
            rows = []
            for i in range(3):
                dice = BASE[i] + 0.05 * li + shift.get((learner, d, i), 0.0)
                rows.append(R.trial_row(spec=spec, cell=cell, cell_id=cid, trial_index=i, trial_id=f"{path.name}{cid}{i}",
                                        hp={"lr": 1e-3 * (i + 1) + hp_shift, "prompt_depth": 3},
                                        result={"objective": 0.3 if i == 1 else 0.5 + dice, "test_dice": dice,
                                                "status": "ok"},
                                        error=None, prov={"git_sha": "feedbeef", "git_dirty": False},
                                        started_at=T0, finished_at=T0))
            RunDir(path).write_cell(cid, rows)
    (path / "plan.json").write_text(json.dumps({"sweep_id": path.name, "fingerprint": {"spec": spec,
                                                                                        "cells": cells}}))
    return path


def test_identical_runs_exit_0(tmp_path, capsys):
    a, b = _write_run(tmp_path / "a"), _write_run(tmp_path / "b")
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "identical trials (status, objective and test Dice bit for bit): 27/27" in out
    assert "same hyperparameters: 27/27" in out and "Kendall tau-b 1.000" in out
    assert out.strip().splitlines()[-1].startswith("verdict: IDENTICAL")


def test_small_differences_agree_within_noise(tmp_path, capsys):
    """A selected trial 1 Dice point off (its cell's trials spread ~5 points) and other hyperparameters in one
    trial: not identical, but within noise."""
    a = _write_run(tmp_path / "a", shift={("vpt", "mini_skin", 1): 0.01, ("coop", "mini_echo", 2): 0.002})
    b = _write_run(tmp_path / "b")
    res = C.compare_runs(a, b)
    assert res.identical == 25 and res.agree and res.same_hp == 27
    assert max(c.delta for c in res.cells) == pytest.approx(1.0)
    assert main(["compare", str(a), str(b)]) == 0
    assert "verdict: AGREE within noise" in capsys.readouterr().out


def test_a_cell_beyond_its_noise_exits_1_and_is_named(tmp_path, capsys):
    # sigma of a cell = std(50, 60, 55) = 5 points; tolerance 2*sqrt(2)*5 = 14.1; a 20-point shift is beyond
    a = _write_run(tmp_path / "a", shift={("maple", "mini_polyp", 1): 0.20})
    b = _write_run(tmp_path / "b")
    res = C.compare_runs(a, b)
    assert [c.cell for c in res.beyond] == ["clipseg_maple_mini_polyp"]
    assert res.beyond[0].tolerance == pytest.approx(2 * 2 ** 0.5 * 5.0)
    assert main(["compare", str(a), str(b)]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("verdict: DIFFER: 1 of 9 cells") and "clipseg_maple_mini_polyp (20.00 > 14.14)" in last
    # a wider Z accepts it
    assert main(["compare", str(a), str(b), "--z", "3"]) == 0


def test_seed_spread_widens_a_cells_tolerance(tmp_path):
    """Where REF reran the selected configuration over seeds and those scatter more than the trials, the
    tolerance follows the seeds."""
    a = _write_run(tmp_path / "a", shift={("maple", "mini_polyp", 1): 0.20})
    b = _write_run(tmp_path / "b")
    cid, cell = "clipseg_maple_mini-polyp", dict(vlsm="clipseg", learner="maple", dataset="mini_polyp", variant="default")
    rows = list(RunDir(b).rows()[cid].values())
    rows += [R.trial_row(spec="mini", cell=cell, cell_id=cid, trial_index=3 + k, trial_id=f"rs{k}", hp={"lr": 2e-3},
                         result={"objective": 0.3, "test_dice": dice, "status": "ok"}, error=None,
                         prov={}, started_at=T0, finished_at=T0, reseed={"k": k, "of": 1})
             for k, dice in ((1, 0.90), (2, 0.45))]
    RunDir(b).write_cell(cid, rows)
    res = C.compare_runs(a, b)
    maple = next(c for c in res.cells if c.cell == "clipseg_maple_mini_polyp")
    assert maple.sigma_from == "seeds" and maple.sigma > 20 and res.agree


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    a = _write_run(tmp_path / "a")
    other = _write_run(tmp_path / "other", spec="mini_seeds")
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "missing: not a run directory" in err
    assert main(["compare", str(a), str(other)]) == 2
    err = capsys.readouterr().err
    assert "ran different plans (spec 'mini' vs 'mini_seeds'" in err
    (tmp_path / "noplan").mkdir()
    shutil.copytree(a / "trials", tmp_path / "noplan" / "trials")
    assert main(["compare", str(tmp_path / "noplan"), str(a)]) == 2
    assert "no plan.json" in capsys.readouterr().err


def test_kendall_tau_b():
    assert C.kendall_tau_b([1, 2, 3], [1, 2, 3]) == 1.0
    assert C.kendall_tau_b([1, 2, 3], [3, 2, 1]) == -1.0
    assert C.kendall_tau_b([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)


def test_committed_mini_against_itself_and_a_perturbed_copy(tmp_path, capsys):
    ref = REPO / "results" / "mini"
    assert main(["compare", str(ref), str(ref)]) == 0
    out = capsys.readouterr().out
    assert "verdict: IDENTICAL" in out
    # a copy whose every selected trial lost 60 Dice points differs beyond noise
    copy = tmp_path / "mini"
    shutil.copytree(ref, copy, ignore=shutil.ignore_patterns("embeddings", "tables"))
    rd = RunDir(copy)
    for cid, rows in rd.rows().items():
        rd.write_cell(cid, [dict(r, test_dice=(r["test_dice"] or 0) * 0.4) for r in rows.values()])
    assert main(["compare", str(copy), str(ref)]) == 1
    assert "verdict: DIFFER" in capsys.readouterr().out


def test_the_same_spec_run_in_another_checkout_is_comparable(tmp_path, capsys):
    """plan.json records absolute data roots and weights; two checkouts (or machines) ran the same plan."""
    a, b = _write_run(tmp_path / "a"), _write_run(tmp_path / "b")
    for run, home in ((a, "/home/alice/tunevlseg"), (b, "/work/ci-check")):
        plan = json.loads((run / "plan.json").read_text())
        for cid, cell in plan["fingerprint"]["cells"].items():
            dataset = cid.split("_")[-1].replace("-", "_")
            cell["config"] = {"data": {"root": f"{home}/data/mini/{dataset}"},
                              "model": {"weights": f"{home}/models/clipseg-mini"}}
        (run / "plan.json").write_text(json.dumps(plan))
    assert main(["compare", str(a), str(b)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("verdict: IDENTICAL")
    # another dataset (not only another place) is still another plan
    plan = json.loads((b / "plan.json").read_text())
    next(iter(plan["fingerprint"]["cells"].values()))["config"]["data"]["root"] = "/work/ci-check/data/mini/other"
    (b / "plan.json").write_text(json.dumps(plan))
    assert main(["compare", str(a), str(b)]) == 2
    assert "different plans" in capsys.readouterr().err
