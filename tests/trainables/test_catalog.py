"""The torch-free catalog: the driver never imports torch, and a learner or VLSM registered once (in its
folder, or here in a test) is on the matrix and in the tables under its display name, with no other file
naming it."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest

from benchmark.plan import search_space
from benchmark.plan.matrix import build_plan
from benchmark.plan.spec import spec_from_dict
from benchmark.results import tables as T
from trainables import catalog
from trainables.catalog import LEARNERS, TEXT, VLSMS
from trainables.learners.config import PromptConfig

REPO = Path(__file__).resolve().parents[2]

_CLI = """
import sys
from benchmark import cli
rc = cli.main(sys.argv[1:])
print("TORCH=" + str("torch" in sys.modules), file=sys.stderr)
sys.exit(rc)
"""


@pytest.mark.parametrize("args", [
    ["plan", "experiments/table3.yaml"],
    ["plan", "experiments/smoke.yaml", "--estimate", "--gpu-seconds-per-image", "0.01"],
    ["space", "maple"],
    ["tables", "results/mini"],
], ids=lambda a: " ".join(a[:2]))
def test_driver_commands_do_not_import_torch(args):
    done = subprocess.run([sys.executable, "-c", _CLI, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "TORCH=False" in done.stderr, f"`tunevlseg {' '.join(args)}` imported torch"


@dataclass(frozen=True)
class MyLearnerConfig(PromptConfig):
    learner_name: ClassVar[str] = "my_learner"


@pytest.fixture
def registered():
    """A VLSM and a learner registered the way their folders' `__init__` would, removed afterwards."""
    catalog.register_vlsm("my_vlsm", "My VLSM", {TEXT}, factory="nowhere:factory", image_size=224,
                          max_prompt_depth=6)
    catalog.register_learner("my_learner", "My Learner", MyLearnerConfig, {TEXT}, model="nowhere:Model",
                             seed=777)
    yield
    VLSMS.remove("my_vlsm")
    LEARNERS.remove("my_learner")


def test_registered_vlsm_and_learner_are_planned_with_their_seed_and_the_common_space(registered):
    spec = spec_from_dict({"name": "mine", "axes": {"vlsm": ["my_vlsm", "clipseg"], "learner": ["my_learner", "vpt"],
                                                    "dataset": ["kvasir"]}}, base_dir=REPO)
    plan = build_plan(spec)
    # vpt prompts the vision encoder, which my_vlsm lacks: viability comes from the catalog's modalities
    assert [c.id for c in plan.cells] == ["my-vlsm_my-learner_kvasir", "clipseg_my-learner_kvasir",
                                          "clipseg_vpt_kvasir"]
    mine = plan.cell("my-vlsm_my-learner_kvasir")
    assert mine.seed == 777 and [p.name for p in mine.params] == ["lr", "weight_decay", "prompt_depth"]
    assert "my_learner" in search_space.PAPER[0].learners()


def test_default_vlsm_axis_is_the_catalog_and_depth_bounds_follow_the_card(registered):
    from trainables.config import ConfigError

    spec = spec_from_dict({"name": "mine", "axes": {"learner": ["coop"], "dataset": ["kvasir"]}}, base_dir=REPO)
    assert spec.axes.vlsm == ("clipseg", "cris", "my_vlsm")
    # my_vlsm takes prompts in 6 layers: a search bound beyond them is refused, naming the field and the range
    deep = {"name": "mine", "axes": {"vlsm": ["my_vlsm"], "learner": ["coop"], "dataset": ["kvasir"]},
            "search": {"bounds": {"prompt_depth": [1, 8]}}}
    with pytest.raises(ConfigError, match=r"search.bounds.prompt_depth: \[1, 8\] goes beyond what my_vlsm takes; "
                                          r"allowed: 1..6"):
        build_plan(spec_from_dict(deep, base_dir=REPO))
    deep["search"]["bounds"]["prompt_depth"] = [1, 6]
    assert [p.high for p in build_plan(spec_from_dict(deep, base_dir=REPO)).cells[0].params
            if p.name == "prompt_depth"] == [6]


def test_registered_names_reach_the_tables_by_their_display_names(registered):
    rows = [dict(vlsm="my_vlsm", learner="my_learner", dataset="kvasir", variant="default", status="ok",
                 trial_index=i, objective=1.0 - i / 10, test_dice=0.5 + i / 10) for i in range(3)]
    table = T.table3(T.check_trials(pd.DataFrame(rows)))
    mine = [r for r in table.rows if (r.vlsm, r.learner) == ("my_vlsm", "my_learner")]
    assert [r.labels for r in mine] == [("My VLSM", "My Learner")] and mine[0].in_average
    assert "| My VLSM | My Learner |" in T.render(table, "md")
    assert T.learner_name("maple") == LEARNERS.get("maple").display_name == "Maple"


def test_unknown_names_list_the_catalog(registered):
    with pytest.raises(Exception, match="unknown VLSM 'nope'; allowed: clipseg, cris, my_vlsm"):
        VLSMS.get("nope")
    assert "my_learner" in catalog.prompt_learners() and "e2e" not in catalog.prompt_learners()


def test_catalog_entries_agree_with_the_adapters():
    """The static facts in each VLSM folder's `__init__` match what its adapter builds."""
    from trainables.vlsm.clipseg import adapter as clipseg
    from trainables.vlsm.cris.model import load_cris_config

    for name in VLSMS.names():
        tiny = VLSMS.get(name)(config="tiny")
        assert tiny.spec.modalities == VLSMS.get(name).modalities, name
        # the normalisation is written once, on the card, and the adapter hands it to the data pipeline
        assert (tuple(tiny.spec.mean), tuple(tiny.spec.std)) == (VLSMS.get(name).mean, VLSMS.get(name).std), name
    rd64 = json.loads((clipseg.CONFIG_DIR / f"{clipseg.DEFAULT_CONFIG}.json").read_text())
    card = VLSMS.get("clipseg")
    assert card.image_size == clipseg.IMAGE_SIZE
    assert card.max_prompt_depth == min(rd64["text_config"]["num_hidden_layers"], max(rd64["extract_layers"]) + 1)
    cris = load_cris_config("cris-rn50")
    assert (VLSMS.get("cris").image_size, VLSMS.get("cris").max_prompt_depth) == (cris.img_size,
                                                                                  cris.transformer_layers)
    for name in LEARNERS.names():
        card = LEARNERS.get(name)
        assert (card.module_cls is None) == (card.model is None), name


def test_folder_hooks_are_found_through_the_catalog():
    """CRIS's checkpoint converter and each VLSM's mini recipe are registered from their folders."""
    from trainables.mini import pretrain

    assert VLSMS.get("cris").converter == "trainables.vlsm.cris.convert:convert_command"
    with pytest.raises(ValueError, match="VLSM 'clipseg' registers no checkpoint converter"):
        VLSMS.get("clipseg").convert("a", "b")
    assert pretrain.mini_vlsms() == ["clipseg", "cris"]
    assert pretrain.recipe("cris").ARCHITECTURE["img_size"] == 96 and pretrain.recipe("clipseg").STEPS == 3000


def test_one_rule_for_local_path_or_hub_id(tmp_path):
    from trainables.resources import is_local_path

    (tmp_path / "ckpt").mkdir()
    for hub in ("CIDAS/clipseg-rd64-refined", "bert-base-uncased", "org/model.v2"):
        assert not is_local_path(hub, tmp_path), hub
    for local in ("/abs/dir", "./x", "~/x", "a/b/c", "ckpt", "ckpt/sub", "cris.safetensors"):
        assert is_local_path(local, tmp_path), local


def test_the_originals_upsampler_choice_is_the_learner_cards_per_vlsm():
    """`upsampler_combine: original` reads the learner's card, keyed by VLSM: the paper's three exceptions
    are declared by CoOp, CoCoOp and VPT, and a new learner declares its own without editing model.py."""
    from trainables.model import ModelConfig

    def mode(vlsm, learner):
        return ModelConfig(vlsm=vlsm, learner=learner, upsampler_combine="original").combine_mode()

    assert {(v, lrn): mode(v, lrn) for v in VLSMS.names() for lrn in LEARNERS.names()
            if mode(v, lrn) != "residual"} == {("clipseg", "coop"): "unused", ("clipseg", "cocoop"): "unused",
                                               ("clipseg", "vpt"): "sum"}
    catalog.register_learner("my_learner", "My Learner", MyLearnerConfig, {TEXT}, model="nowhere:Model",
                             original_upsampler={"cris": "sum"})
    try:
        assert mode("cris", "my_learner") == "sum" and mode("clipseg", "my_learner") == "residual"
    finally:
        LEARNERS.remove("my_learner")
