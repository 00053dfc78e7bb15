"""A VLSM is one registration: a third VLSM registered here, in the test, with no other file touched, is
planned (default axis, its viable learners, its prompt-depth limit), priced from its own cost facts and
swept end to end with the synthetic trainable (trainables/fake.py builds no model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmark.plan import estimate as E
from benchmark.plan.matrix import build_plan
from benchmark.plan.spec import load_spec
from benchmark.results.run_dir import RunDir
from trainables import catalog
from trainables.catalog import TEXT, VLSMS, VLSMCost

REPO = Path(__file__).resolve().parents[2]

# Text prompts only, six prompt-taking layers, cost facts of its own (a third of CRIS's, to tell them apart).
THIRD = dict(display_name="Third VLSM", modalities={TEXT}, factory="nowhere:build", image_size=128,
             max_prompt_depth=6, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
             cost=VLSMCost(forward=12, text_grad=9, vision_grad=None, weight_grad=30, image_features=3,
                           cached_image_pass=12, cached_image_features=12))


@pytest.fixture
def third():
    catalog.register_vlsm("third", **THIRD)
    yield "third"
    VLSMS.remove("third")


def _spec(tmp_path: Path, axes: dict | None = None, **extra) -> Path:
    """smoke.yaml (2 trials per cell of the fake trainable); by default with no vlsm axis: every VLSM of the
    catalog."""
    data = yaml.safe_load((REPO / "experiments" / "smoke.yaml").read_text())
    data["axes"] = axes or {"learner": ["coop", "maple"], "dataset": ["kvasir"]}
    data["search"].update(trials=2, **extra)
    data["name"] = "third"
    path = tmp_path / "experiments" / "third.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_third_vlsm_is_planned_and_priced_from_its_card(third, tmp_path):
    plan = build_plan(load_spec(_spec(tmp_path, bounds={"prompt_depth": [1, 6]})))
    mine = [c for c in plan.cells if c.vlsm == "third"]
    assert [c.learner for c in mine] == ["coop"]  # maple prompts the vision encoder it lacks
    assert {c.vlsm for c in plan.cells} == {"clipseg", "cris", "third"}
    est = E.estimate(mine, sizes=lambda ds: (800, 100))
    cell = est.cells[0]
    hits = (E.UNTOUCHED_TRAIN_FRACTION * 800 + 100) / 900
    assert cell.rate.source == "assumed, feature cache"
    assert cell.rate.seconds_per_image == pytest.approx((12 + 9 - 12 * hits) * 1e9 / (0.35 * 989e12))
    with pytest.raises(Exception, match="search.bounds.prompt_depth: \\[1, 8\\] goes beyond what third takes"):
        build_plan(load_spec(_spec(tmp_path / "deep", bounds={"prompt_depth": [1, 8]})))


@pytest.mark.ray
@pytest.mark.slow  # its own Ray start plus a sweep: ~45 s on 2 busy cores (`make test-slow`)
def test_third_vlsm_runs_a_fake_sweep(third, tmp_path, local_ray):
    from benchmark.sweep.coordinator import run_sweep

    spec = load_spec(_spec(tmp_path, axes={"vlsm": ["third"], "learner": ["coop"], "dataset": ["kvasir"]}))
    run_sweep(spec, tmp_path / "runs")
    df = RunDir(tmp_path / "runs" / "third").frame()
    assert sorted(df["cell_id"]) == ["third_coop_kvasir"] * 2 and set(df["vlsm"]) == {"third"}
    assert (df["status"] == "ok").all()
