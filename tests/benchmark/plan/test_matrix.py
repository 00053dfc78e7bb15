"""The matrix (benchmark/plan/matrix.py): a spec expanded into cells of viable (VLSM, learner) pairs, cell ids
in either spelling, the per-cell trial config, the fingerprint a resume compares, refusals before any trial."""

from __future__ import annotations

import pytest

from benchmark.plan.matrix import build_plan, cell_id, match_cell, viable
from benchmark.plan.spec import spec_from_dict
from trainables import catalog
from trainables.config import ConfigError


def _spec(**over):
    data = {"axes": {"vlsm": ["clipseg", "cris"], "learner": ["coop", "vpt", "maple", "e2e"],
                     "dataset": ["kvasir", "isic"]}, "search": {"trials": 3}}
    data.update(over)
    return spec_from_dict(data)


def test_cells_are_the_viable_pairs_times_datasets_in_axis_order():
    spec = _spec()
    plan = build_plan(spec)
    pairs = [(v, lrn) for v in spec.axes.vlsm for lrn in spec.axes.learner if viable(lrn, v)]
    assert [(c.vlsm, c.learner, c.dataset) for c in plan.cells] == [
        (v, lrn, d) for v, lrn in pairs for d in spec.axes.dataset]
    assert len({c.id for c in plan.cells}) == len(plan.cells)
    for c in plan.cells:  # the catalog's modalities decide: a learner prompts only encoders its VLSM has
        assert catalog.LEARNERS.get(c.learner).modalities <= catalog.VLSMS.get(c.vlsm).modalities
        assert c.config["model"]["vlsm"] == c.vlsm and c.config["data"]["dataset"] == c.dataset
    e2e = [c for c in plan.cells if c.learner == "e2e"]
    assert e2e and all(c.trials == 1 and not c.params for c in e2e)  # nothing to search: one trial
    assert plan.total_trials == sum(1 if c.learner == "e2e" else 3 for c in plan.cells)


def test_skip_and_rules_apply_per_cell():
    plan = build_plan(_spec(axes={"vlsm": ["clipseg"], "learner": ["coop", "vpt"], "dataset": ["kvasir", "isic"],
                                  "skip": [{"learner": "vpt", "dataset": "isic"}]},
                            rules=[{"when": {"learner": "coop"}, "set": {"train.batch_size": 2, "resources.cpu": 3}}]))
    assert [c.id for c in plan.cells] == ["clipseg_coop_kvasir", "clipseg_coop_isic", "clipseg_vpt_kvasir"]
    coop, vpt = plan.cell("clipseg_coop_kvasir"), plan.cell("clipseg_vpt_kvasir")
    assert coop.config["train"]["batch_size"] == 2 and coop.resources["cpu"] == 3.0
    assert "batch_size" not in vpt.config["train"] and vpt.resources["cpu"] != 3.0


def test_cell_ids_read_underscores_and_dashes_alike():
    assert cell_id("clipseg", "shared_attention", "mini_polyp") == "clipseg_shared-attention_mini-polyp"
    assert cell_id("clipseg", "coop", "kvasir", "default") == "clipseg_coop_kvasir"
    assert cell_id("clipseg", "coop", "kvasir", "no_aug") == "clipseg_coop_kvasir_no-aug"
    known = ["clipseg_shared-attention_kvasir", "cris_coop_kvasir"]
    assert match_cell("clipseg_shared_attention_kvasir", known) == "clipseg_shared-attention_kvasir"
    with pytest.raises(ConfigError, match=r"--cell 'cris_coop_kvasr' is not in this run; did you mean 'cris_coop_kvasir'"):
        match_cell("cris_coop_kvasr", known, where="--cell")


def test_the_fingerprint_changes_with_what_shapes_a_trial_and_only_with_that():
    base = build_plan(_spec()).fingerprint()
    assert build_plan(_spec()).fingerprint() == base  # deterministic
    assert base["version"] == 2 and set(base["cells"]) == {c.id for c in build_plan(_spec()).cells}
    for change in ({"search": {"trials": 4}}, {"fixed": {"train": {"max_epochs": 7}}},
                   {"search": {"trials": 3, "bounds": {"prompt_depth": [1, 6]}}}):
        assert build_plan(_spec(**change)).fingerprint() != base, change
    reseeded = build_plan(_spec(select={"reseed": 2}))
    assert all(c["reseeds"] == 2 for cid, c in reseeded.fingerprint()["cells"].items() if "e2e" not in cid)
    assert "reseeds" not in next(iter(base["cells"].values()))  # absent when unset: old runs keep theirs


def test_refusals_come_before_any_trial():
    with pytest.raises(ConfigError, match="prompt_depth"):
        build_plan(_spec(search={"trials": 3, "bounds": {"prompt_depth": [1, 40]}}))
    with pytest.raises(ConfigError, match="cell clipseg_coop_kvasir model.learner_config"):
        build_plan(_spec(axes={"vlsm": ["clipseg"], "learner": ["coop"], "dataset": ["kvasir"]},
                         fixed={"model": {"learner_config": {"no_such_setting": 1}}}))
    not_on_cris = [lrn for lrn in catalog.LEARNERS.names() if not viable(lrn, "cris")]  # CRIS: text prompts only
    assert not_on_cris
    with pytest.raises(ConfigError, match="is not viable"):
        build_plan(_spec(axes={"pairs": [["cris", not_on_cris[0]]], "dataset": ["kvasir"]}))
