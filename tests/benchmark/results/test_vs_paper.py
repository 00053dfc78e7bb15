"""`--vs-paper` compares only like with like, and Table 2 shows what the run searched (issue 19, item 3)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.results import tables as T

REPO = Path(__file__).resolve().parents[3]


def _trial(**kw) -> dict:
    base = dict(vlsm="clipseg", learner="maple", dataset="kvasir", variant="default", status="ok",
                test_dice=0.5, objective=0.5, trial_index=0)
    base.update(kw)
    base.setdefault("trial_id", f"t{base['trial_index']}-{base['dataset']}-{base['vlsm']}-{base['learner']}")
    return base


def _mini_trials() -> pd.DataFrame:
    rows = [_trial(learner=l, dataset=d, test_dice=0.6 + 0.01 * i)
            for i, (l, d) in enumerate((l, d) for l in ("maple", "coop", "vpt") for d in ("mini_skin", "mini_echo"))]
    return T.check_trials(pd.DataFrame(rows))


def test_no_dataset_in_common_prints_only_why():
    cmp = T.compare(T.table3(_mini_trials()))
    assert cmp.not_comparable and "none of the paper's ten" in cmp.not_comparable
    md = T.render(cmp, "md")
    assert md.count("\n") == 1 and "mini_echo, mini_skin" in md
    for f in T.FORMATS:  # the paper's means (MaPLe 79.16, average 73.10) appear in no format
        out = T.render(cmp, f)
        assert "79.16" not in out and "73.10" not in out and out.count("\n") == 1


def test_mean_over_extra_datasets_is_not_compared_with_the_papers_mean():
    # A run on all ten paper datasets plus one of its own: the row mean is over eleven datasets, the
    # paper's over ten, so only the cells compare.
    paper = pd.read_csv(REPO / "results" / "paper" / "table3.csv")
    maple = paper[paper["learner"] == "Maple"].iloc[0]
    rows = [_trial(dataset=d.key, test_dice=maple[d.display] / 100) for d in T.DATASETS]
    rows.append(_trial(dataset="mini_skin", test_dice=0.9))
    table = T.table3(T.check_trials(pd.DataFrame(rows)))
    cmp = T.compare(table)
    i = [k for k, r in enumerate(table.rows) if r.learner == "maple"][0]
    assert cmp.diff.loc[i, "kvasir"] == pytest.approx(0.0)  # cells still compare
    assert np.isnan(cmp.diff.loc[i, "mean"]) and np.isnan(cmp.diff.loc[i, "std"])
    assert not cmp.not_comparable
    assert bool(cmp.partial[i]) and not cmp.average_comparable
    md = T.render(cmp, "md")
    assert f"/ {maple['mean']:.2f} (" not in md  # no difference printed against the paper's mean

    # The same row without the extra dataset: its mean is the paper's, difference zero.
    exact = T.compare(T.table3(T.check_trials(pd.DataFrame(rows[:-1]))))
    assert exact.diff.loc[i, "mean"] == pytest.approx(0.0) and not exact.partial[i]


def _run_dir(tmp_path: Path, space: list[dict] | None) -> Path:
    run = tmp_path / "mini"
    (run / "trials").mkdir(parents=True)
    df = _mini_trials().assign(spec="mini", schema_version=max(T.supported_schema_versions()),
                               hp_prompt_depth=3, hp_lr=1e-3, hp_weight_decay=1e-4)
    df.to_parquet(run / "trials" / "cells.parquet")
    state = {"sweep_id": "abc", "fingerprint": {"spec": "mini", "cells": {}}, "created_at": "2026-01-01"}
    if space is not None:
        state["space"] = space
    (run / "plan.json").write_text(json.dumps(state))
    return run


def _narrowed_space() -> list[dict]:
    from benchmark.plan import search_space as S
    from trainables.catalog import prompt_learners

    params = S.narrow(S.params_for("shared_attention"), {"prompt_depth": [1, 6], "nhead": [16, 32]})
    return [dict(p.as_dict(), applies_to=list(prompt_learners())) if p.name in ("lr", "weight_decay", "prompt_depth")
            else p.as_dict() for p in params]


def _tables_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmark", "tables", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_cli_mini_run_writes_no_vs_paper_files_and_table2_shows_searched_bounds(tmp_path):
    run = _run_dir(tmp_path, _narrowed_space())
    out = tmp_path / "out"
    out.mkdir()
    (out / "table3_vs_paper.md").write_text("stale comparison from an earlier version\n")
    p = _tables_cli(str(run), "--out", str(out), "--format", "all", "--vs-paper", "--no-figures")
    assert p.returncode == 0, p.stderr
    assert not list(out.glob("table*_vs_paper.*"))  # the stale one is gone too
    assert "skipped Table 3 vs paper (no dataset in common" in p.stderr
    report = (out / "report.md").read_text()
    assert "Table 3 not compared with the paper" in report and "79.16" not in report

    t2 = (out / "table2.md").read_text()
    assert "| Prompt depth | [1, 6] † | ALL | Integer |" in t2
    assert "| Transformer: Number of Heads | {16, 32} † | Shared Attention | Choice |" in t2
    assert "| Learning rate | [1e-5, 5e-3] | ALL | Log |" in t2  # unchanged domains carry no mark
    assert "† differs from the paper's Table 2 (Prompt depth: [1, 11]; Transformer: Number of Heads: " \
           "{16, 20, 32})." in t2
    assert "from its plan.json" in t2
    assert "$^\\dagger$" in (out / "table2.tex").read_text()


def test_table2_without_a_recorded_space_says_it_shows_the_papers(tmp_path):
    run = _run_dir(tmp_path, None)
    p = _tables_cli(str(run))
    assert p.returncode == 0, p.stderr
    assert "| Prompt depth | [1, 11] | ALL | Integer |" in p.stdout
    assert "does not record what it searched" in p.stdout
    p = _tables_cli(str(run), "--space", "reference")
    assert "{32, 129, 32} †" in p.stdout and "(Intermediate dimension: {32, 64, 96, 128}" in p.stdout


def test_plan_records_the_searched_domains_and_backfills_an_old_plan(tmp_path):
    from benchmark.plan.matrix import build_plan
    from benchmark.plan.spec import spec_from_dict
    from benchmark.sweep.run_state import plan_state

    spec = spec_from_dict({"axes": {"vlsm": ["clipseg"], "learner": ["coop", "shared_attention", "e2e"],
                                    "dataset": ["kvasir"]},
                           "search": {"trials": 2, "bounds": {"prompt_depth": [1, 6], "nhead": [16, 32]}}})
    plan = build_plan(spec)
    space = {d["name"]: d for d in plan.searched_space()}
    assert (space["prompt_depth"]["low"], space["prompt_depth"]["high"]) == (1, 6)
    assert space["prompt_depth"]["applies_to"] == ["coop", "shared_attention"]  # the learners that searched it
    assert space["nhead"]["choices"] == [16, 32] and space["nhead"]["applies_to"] == ["shared_attention"]
    assert "intermediate_dim" not in space  # no planned learner searches it

    run_dir = tmp_path / "run"
    state = plan_state(run_dir, plan, force=False)
    assert json.loads((run_dir / "plan.json").read_text())["space"] == state["space"] == plan.searched_space()
    # A plan.json from before the record: same fingerprint, so the sweep id stays and the space is added.
    old = {k: v for k, v in state.items() if k != "space"}
    (run_dir / "plan.json").write_text(json.dumps(old))
    (run_dir / "tune").mkdir()
    again = plan_state(run_dir, plan, force=False)
    assert again["sweep_id"] == state["sweep_id"] and again["space"] == plan.searched_space()
    params = T.searched_space(run_dir)
    assert [p.name for p in params][:3] == ["lr", "weight_decay", "prompt_depth"]
    assert T.table2(params, mark_vs_paper=True).frame()["Search Space"].tolist()[2] == "[1, 6] †"
