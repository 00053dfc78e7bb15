"""Experiment specs and their expansion into cells (`benchmark.plan.spec`, `benchmark.plan.matrix`, `tunevlseg plan`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from benchmark import cli
from benchmark.plan import matrix
from benchmark.plan.matrix import build_plan, cell_id, check_paths
from benchmark.plan.spec import load_spec, spec_from_dict
from trainables.config import ConfigError

REPO = Path(__file__).resolve().parents[3]
EXPERIMENTS = REPO / "experiments"
TEN = ["bkai", "clinicdb", "kvasir", "dfu", "isic", "busi", "camus", "chexlocalize", "cityscapes", "voc"]


def _spec(**raw):
    base = {"axes": {"vlsm": ["clipseg"], "learner": ["coop"], "dataset": ["kvasir"]}}
    base.update(raw)
    return spec_from_dict(base, base_dir=REPO)


def test_plan_table3_json(capsys):
    assert cli.main(["plan", str(EXPERIMENTS / "table3.yaml"), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    cells = plan["cells"]
    tuned = [c for c in cells if c["learner"] != "e2e"]
    e2e = [c for c in cells if c["learner"] == "e2e"]
    assert len(tuned) == 80 and {c["trials"] for c in tuned} == {20}
    pairs = {(c["vlsm"], c["learner"]) for c in tuned}
    assert pairs == {("clipseg", lrn) for lrn in ["coop", "cocoop", "vpt", "maple", "shared_attention",
                                                   "shared_separate"]} | {("cris", "coop"), ("cris", "cocoop")}
    assert len(e2e) == 20 and {c["trials"] for c in e2e} == {1} and all(c["searched"] == [] for c in e2e)
    assert {c["dataset"] for c in cells} == set(TEN)
    assert plan["total_trials"] == 80 * 20 + 20
    ids = [c["cell_id"] for c in cells]
    assert len(set(ids)) == 100 and "clipseg_shared-attention_kvasir" in ids and "cris_e2e_voc" in ids


def test_table3_e2e_cells_use_the_original_fixed_settings():
    plan = build_plan(load_spec(EXPERIMENTS / "table3.yaml"))
    clip, cris = plan.cell("clipseg_e2e_kvasir"), plan.cell("cris_e2e_kvasir")
    assert clip.config["train"].items() >= {"lr": 2e-4, "weight_decay": 1e-3, "max_epochs": 40,
                                           "batch_size": 128}.items()
    assert cris.config["train"]["lr"] == 5e-5 and cris.config["train"]["effective_batch_size"] == 128
    assert clip.resources["gpu"] == 1 and plan.cell("clipseg_coop_kvasir").resources["gpu"] == 0.25
    # The original trained MaPLe / Shared-* with batch 16 x 2, the others with 32 x 1.
    assert plan.cell("clipseg_maple_isic").config["train"]["batch_size"] == 16
    assert plan.cell("cris_cocoop_isic").config["train"]["batch_size"] == 32
    maple = plan.cell("clipseg_maple_kvasir")
    assert maple.seed == 12345 and plan.cell("clipseg_shared-attention_kvasir").seed == 123456
    assert maple.config["model"].items() >= {"vlsm": "clipseg", "learner": "maple",
                                             "weights": "CIDAS/clipseg-rd64"}.items()
    assert maple.config["data"]["dataset"] == "kvasir"


@pytest.mark.parametrize("name, cells, trials", [("table4", 20, 400), ("table5", 80, 1600), ("reference", 100, 1620),
                                                 ("smoke", 2, 8), ("mini", 45, 84)])
def test_every_shipped_spec_plans(name, cells, trials):
    plan = build_plan(load_spec(EXPERIMENTS / f"{name}.yaml"))
    assert (len(plan.cells), plan.total_trials) == (cells, trials)


def test_variants_change_the_trial_config_and_the_id():
    t4 = build_plan(load_spec(EXPERIMENTS / "table4.yaml"))
    gauss = t4.cell("clipseg_maple_kvasir_gaussian-init")
    assert gauss.variant == "gaussian_init" and gauss.config["model"]["learner_config"]["context_init"] is None
    assert "context_init" not in t4.cell("clipseg_maple_kvasir").config["model"]["learner_config"]
    t5 = build_plan(load_spec(EXPERIMENTS / "table5.yaml"))
    assert all(c.config["model"]["upsampler"] is False for c in t5.cells)
    assert t5.cells[0].id.endswith("_no-upsampler")


def test_cell_ids_follow_the_naming_rule():
    assert cell_id("clipseg", "maple", "kvasir") == "clipseg_maple_kvasir"
    assert cell_id("clipseg", "shared_separate", "mini_polyp", "no_upsampler") == \
        "clipseg_shared-separate_mini-polyp_no-upsampler"


def test_relative_paths_become_absolute(tmp_path):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "models" / "m").mkdir(parents=True)
    path = tmp_path / "experiments" / "s.yaml"
    path.write_text(yaml.safe_dump({"axes": {"learner": ["coop"], "dataset": ["kvasir"]},
                                    "vlsms": {"clipseg": {"weights": "models/m"}, "cris": {"weights": "CIDAS/x"}},
                                    "data": {"root": "data"}}))
    spec = load_spec(path)
    assert spec.name == "s"
    assert spec.vlsms["clipseg"].weights == str(tmp_path / "models" / "m")
    assert spec.vlsms["cris"].weights == "CIDAS/x"  # a hub id stays as it is
    assert spec.data.root == str(tmp_path / "data")
    plan = build_plan(spec)
    assert plan.cell("clipseg_coop_kvasir").config["data"]["root"] == str(tmp_path / "data" / "kvasir")
    with pytest.raises(FileNotFoundError, match=r"dataset root for 'kvasir' does not exist: .*data/kvasir.*--data DIR"):
        check_paths(plan)
    (tmp_path / "data" / "kvasir").mkdir(parents=True)
    check_paths(plan)


@pytest.mark.parametrize("raw, error, match", [
    ({"colour": 1}, ConfigError, r"unknown key 'colour'; allowed: name, description, trainable, axes"),
    ({"search": {"trails": 3}}, ConfigError, r"search unknown key 'trails'; allowed: trials, space"),
    ({"search": {"trials": 0}}, ConfigError, r"search.trials: must be at least 1"),
    ({"search": {"mode": "best"}}, ConfigError, r"mode: 'best' is not allowed; allowed: 'min', 'max'"),
    ({"search": {"space": "mine"}}, ConfigError, r"unknown space 'mine'; allowed: paper, reference"),
    ({"axes": {"learner": ["coop"], "dataset": []}}, ConfigError, r"axes.dataset: list at least one dataset"),
    ({"axes": {"learner": ["coop"], "dataset": ["kvasir"], "variant": ["blue"]}}, ConfigError,
     r"unknown variant 'blue'; allowed: default, gaussian_init, no_upsampler"),
    ({"fixed": {"trian": {}}}, ConfigError, r"fixed: unknown section 'trian'; allowed: model, data, train, fake"),
    ({"fixed": {"model": {"learner": "vpt"}}}, ConfigError, r"fixed.model.learner: set by the matrix"),
    ({"rules": [{"when": {"learnr": "coop"}, "set": {}}]}, ConfigError, r"rules\[0\].when: unknown key 'learnr'"),
    ({"rules": [{"when": {}, "set": {"lr": 1}}]}, ConfigError, r"'lr' must be a dotted path starting with one of"),
    ({"tables": ["table3"]}, ConfigError, r"unknown key 'tables'"),
    ({"trainable": "not a path"}, ConfigError, r"must be an import path"),
])
def test_invalid_specs_name_the_key(raw, error, match):
    with pytest.raises(error, match=match):
        _spec(**raw)


@pytest.mark.parametrize("axes, error, match", [
    ({"learner": ["copo"], "dataset": ["kvasir"]}, ConfigError,
     r"axes.learner: unknown learner 'copo' \(did you mean 'coop'\?\); allowed: adapter, cocoop, coop"),
    ({"vlsm": ["sam"], "learner": ["coop"], "dataset": ["kvasir"]}, ConfigError, r"axes.vlsm: unknown VLSM 'sam'"),
    ({"learner": ["coop"], "dataset": ["kvasri"]}, ConfigError, r"unknown dataset 'kvasri' "
     r"\(did you mean 'kvasir'\?\); allowed: .*kvasir"),
    ({"vlsm": ["cris"], "learner": ["vpt"], "dataset": ["kvasir"]}, ConfigError,
     r"vpt prompts the vision encoder, which none of axes.vlsm \['cris'\] accepts"),
    ({"pairs": [["cris", "maple"]], "dataset": ["kvasir"]}, ConfigError,
     r"\(cris, maple\) is not viable: maple prompts the text and vision encoder but cris accepts prompts only in text"),
])
def test_unknown_names_and_non_viable_pairs(axes, error, match):
    with pytest.raises(error, match=match):
        build_plan(_spec(axes=axes))


def test_a_users_own_card_folder_is_what_plans_and_trials_read(tmp_path, monkeypatch):
    from trainables.data.cards import load_card

    cards = tmp_path / "cards"
    cards.mkdir()
    card = yaml.safe_load((Path(__file__).resolve().parents[3] / "datasets/mini_polyp.yaml").read_text())
    (cards / "my_polyps.yaml").write_text(yaml.safe_dump({**card, "name": "my_polyps"}))
    with pytest.raises(ConfigError, match="unknown dataset 'my_polyps'"):
        build_plan(_spec(axes={"learner": ["coop"], "dataset": ["my_polyps"]}))
    monkeypatch.setenv("TUNEVLSEG_CARDS", str(cards))
    plan = build_plan(_spec(axes={"learner": ["coop"], "dataset": ["my_polyps"]}))
    assert "clipseg_coop_my-polyps" in [c.id for c in plan.cells]
    assert load_card("my_polyps").display == card["display"]  # the trial side reads the same folder


def test_viable_product_skips_silently_but_explicit_pairs_must_be_viable():
    plan = build_plan(_spec(axes={"vlsm": ["clipseg", "cris"], "learner": ["vpt", "coop"], "dataset": ["isic"]}))
    assert [c.id for c in plan.cells] == ["clipseg_vpt_isic", "clipseg_coop_isic", "cris_coop_isic"]
    plan = build_plan(_spec(axes={"pairs": [["cris", "coop"]], "dataset": ["isic"]}))
    assert [c.id for c in plan.cells] == ["cris_coop_isic"]


def test_viability_follows_the_lookup_functions(monkeypatch):
    """Viability comes from modalities, not a list: a VLSM that gains a vision encoder gains VPT."""
    axes = {"vlsm": ["cris"], "learner": ["vpt"], "dataset": ["kvasir"]}
    monkeypatch.setattr(matrix, "vlsm_modalities", lambda name: frozenset({"text", "vision"}))
    assert [c.id for c in build_plan(_spec(axes=axes)).cells] == ["cris_vpt_kvasir"]


def test_rules_typos_and_learner_config_typos_fail_early():
    with pytest.raises(ConfigError, match=r"rules\[0\].when.learner: 'mapel' is not on the axes"):
        build_plan(_spec(rules=[{"when": {"learner": "mapel"}, "set": {"train.lr": 1e-3}}]))
    spec = _spec(rules=[{"when": {"learner": "coop"}, "set": {"model.learner_config.num_contxt": 8}}])
    with pytest.raises(ConfigError, match=r"unknown key 'num_contxt'"):
        build_plan(spec)


def test_plan_text_output(capsys):
    assert cli.main(["plan", str(EXPERIMENTS / "table4.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("table4: 20 cells, 400 trials")
    assert "clipseg_maple_kvasir_gaussian-init" in out and "intermediate_dim" in out


def test_axes_skip_drops_matching_cells_only():
    plan = build_plan(load_spec(EXPERIMENTS / "mini.yaml"))
    ids = {c.id for c in plan.cells}
    assert "clipseg_maple_mini-polyp_gaussian-init" in ids
    assert not any(i.endswith("_gaussian-init") and "_maple_" not in i for i in ids)
    assert not any(i.startswith("cris_") and i.endswith("_no-upsampler") for i in ids)
    assert "clipseg_vpt_mini-echo_no-upsampler" in ids and "clipseg_coop_mini-echo_no-upsampler" not in ids


def test_search_bounds_narrow_the_paper_space():
    plan = build_plan(load_spec(EXPERIMENTS / "mini.yaml"))
    depth = {p.name: p for p in plan.cell("clipseg_vpt_mini-polyp").params}["prompt_depth"]
    assert (depth.low, depth.high) == (1, 6)
    nhead = {p.name: p for p in plan.cell("clipseg_shared-attention_mini-polyp").params}["nhead"]
    assert nhead.choices == (16, 32)
    # the paper space itself is untouched
    t3 = build_plan(load_spec(EXPERIMENTS / "table3.yaml"))
    assert {p.name: p for p in t3.cell("clipseg_vpt_kvasir").params}["prompt_depth"].high == 11


@pytest.mark.parametrize("bounds, match", [
    ({"depth": [1, 6]}, "search.bounds: unknown parameter 'depth'"),
    ({"prompt_depth": [6, 1]}, r"search.bounds.prompt_depth: expected \[low, high\]"),
    ({"nhead": 16}, "search.bounds.nhead: expected a list of choices"),
])
def test_bad_search_bounds_are_rejected(bounds, match):
    raw = yaml.safe_load((EXPERIMENTS / "smoke.yaml").read_text())
    raw["search"]["bounds"] = bounds
    with pytest.raises(ConfigError, match=match):
        spec_from_dict(raw, base_dir=REPO)


def test_bad_skip_rule_is_rejected():
    raw = yaml.safe_load((EXPERIMENTS / "smoke.yaml").read_text())
    raw["axes"]["skip"] = [{"learnr": "coop"}]
    with pytest.raises(ConfigError, match=r"axes.skip\[0\]: unknown key\(s\) learnr"):
        spec_from_dict(raw, base_dir=REPO)
