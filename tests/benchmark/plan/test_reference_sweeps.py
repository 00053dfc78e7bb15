"""experiments/reference_sweeps.yaml: the original's settings in the era of its sweeps (the YAML cites the
commits), beside reference.yaml (its last commit). Both load and plan; they differ exactly where the
original's history says the sweeps differed."""

from __future__ import annotations

from pathlib import Path

from benchmark.plan.matrix import build_plan
from benchmark.plan.spec import load_spec
from trainables.trial import TrialConfig

EXPERIMENTS = Path(__file__).resolve().parents[3] / "experiments"


def _plan(name):
    spec = load_spec(EXPERIMENTS / name)
    return spec, build_plan(spec.with_data_root("/data"))


def test_sweep_era_spec_carries_the_originals_sweep_settings():
    spec, plan = _plan("reference_sweeps.yaml")
    assert len(plan.cells) == 100
    assert spec.search.max_concurrent_per_cell == 1 and spec.search.trials == 20
    for c in plan.cells:
        train = TrialConfig.from_dict(c.config).train  # every field is one the trial knows
        assert train.early_stop_patience == 12 and train.min_epochs == 10 and train.seed == 12345
        assert train.max_epochs == (40 if c.learner == "e2e" else 100)
        if c.params:  # searched cells: TPE seed 1234 for every learner (3b7ed87 .. 62dab74^)
            assert c.seed == 1234


def test_sweep_era_spec_differs_from_the_last_commits_only_in_the_sweep_settings():
    (last_spec, last), (_, sweeps) = _plan("reference.yaml"), _plan("reference_sweeps.yaml")
    assert [c.id for c in last.cells] == [c.id for c in sweeps.cells]
    assert last_spec.search.max_concurrent_per_cell is None
    searched = {c.learner: c.seed for c in last.cells if c.params}
    assert searched["coop"] == 12345 and searched["shared_separate"] == 4322  # 62dab74's seeds
    for a, b in zip(last.cells, sweeps.cells):
        ta, tb = dict(a.config["train"]), dict(b.config["train"])
        if a.learner != "e2e":
            assert (ta.pop("max_epochs"), tb.pop("max_epochs")) == (20, 100)
        tb.pop("early_stop_patience")
        ta.pop("max_epochs", None), tb.pop("max_epochs", None)
        assert ta == tb and {k: v for k, v in a.config.items() if k != "train"} == \
            {k: v for k, v in b.config.items() if k != "train"}

