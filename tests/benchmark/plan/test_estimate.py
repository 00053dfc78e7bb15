"""`tunevlseg plan SPEC --estimate`: cost arithmetic, rates measured from a run's Parquet, the CLI output.

Torch-free: the matrix reads the torch-free catalog."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmark import cli
from benchmark.plan import estimate as E
from benchmark.results import records
from benchmark.results.run_dir import RunDir
from trainables import catalog
from trainables.catalog import TEXT, VLSMS

REPO = Path(__file__).resolve().parents[3]
SMOKE = REPO / "experiments" / "smoke.yaml"  # 2 cells (clipseg coop / maple on kvasir) x 4 trials, 3 epochs


def _cell(cid, vlsm, learner, dataset, trials, max_epochs=None, gpu=0.25):
    train = {} if max_epochs is None else {"max_epochs": max_epochs}
    return SimpleNamespace(id=cid, vlsm=vlsm, learner=learner, dataset=dataset, trials=trials, reseeds=0,
                           config={"train": train}, resources={"cpu": 1.0, "gpu": gpu})


SIZES = {"a": (80, 20), "b": (300, 100)}


def test_whole_gpu_rate_gives_gpu_seconds_and_slot_seconds_by_share():
    cells = [_cell("c1", "clipseg", "vpt", "a", trials=5, max_epochs=4, gpu=0.25),
             _cell("c2", "clipseg", "vpt", "b", trials=2, gpu=0.5)]  # max_epochs: the default
    est = E.estimate(cells, sizes=SIZES.__getitem__, gpu_seconds_per_image=0.01)
    c1, c2 = est.cells
    assert c1.images == 5 * 4 * 100 and c2.images == 2 * E.DEFAULT_MAX_EPOCHS * 400
    assert c1.gpu_seconds == pytest.approx(2000 * 0.01) and c1.slot_seconds == pytest.approx(2000 * 0.01 / 0.25)
    assert est.gpu_hours == pytest.approx((2000 + 16000) * 0.01 / 3600)
    sub = est.subtotals()[("clipseg", "vpt")]
    assert sub["cells"] == 2 and sub["trials"] == 7 and sub["images"] == 18000


def test_measured_slot_seconds_are_scaled_by_the_share_and_overhead_is_added():
    cells = [_cell("c1", "cris", "coop", "a", trials=3, max_epochs=2, gpu=0.25)]
    est = E.estimate(cells, sizes=SIZES.__getitem__, measured={("cris", "coop"): (0.02, 7)}, run_label="r",
                     overhead_seconds=10)
    c = est.cells[0]
    assert c.rate.slot_seconds and "7 trials" in c.rate.source
    assert c.slot_seconds == pytest.approx(3 * 2 * 100 * 0.02 + 3 * 10)
    assert c.gpu_seconds == pytest.approx(c.slot_seconds * 0.25)


def test_unmeasured_pairs_fall_back_to_the_documented_assumption():
    cells = [_cell("c1", "clipseg", "coop", "a", 1, 1), _cell("c2", "clipseg", "vpt", "a", 1, 1)]
    est = E.estimate(cells, sizes=SIZES.__getitem__, measured={("clipseg", "coop"): (0.5, 2)})
    coop, vpt = est.cells
    assert coop.rate.seconds_per_image == 0.5
    assert vpt.rate.source == "assumed"
    assert vpt.rate.seconds_per_image == pytest.approx(E.assumed_seconds_per_image("clipseg", "vpt"))
    # VPT back-propagates through the vision tower, CoOp does not: about twice the cost per image.
    ratio = E.assumed_seconds_per_image("clipseg", "vpt") / E.assumed_seconds_per_image("clipseg", "coop")
    assert 1.8 < ratio < 2.1
    assert any("clipseg/vpt" in n for n in est.notes)


def test_rates_from_rows_normalise_by_epochs_and_split_sizes_and_skip_failures():
    rows = [
        {"vlsm": "clipseg", "learner": "vpt", "dataset": "a", "status": "ok", "seconds": 100.0, "epochs_run": 5},
        {"vlsm": "clipseg", "learner": "vpt", "dataset": "b", "status": "pruned", "seconds": 40.0, "epochs_run": 1},
        {"vlsm": "clipseg", "learner": "vpt", "dataset": "a", "status": "error", "seconds": 9e9, "epochs_run": 1},
        {"vlsm": "clipseg", "learner": "vpt", "dataset": "a", "status": "ok", "seconds": None, "epochs_run": None},
        {"vlsm": "clipseg", "learner": "coop", "dataset": "zzz", "status": "ok", "seconds": 1.0, "epochs_run": 1},
    ]

    def sizes(ds):
        if ds not in SIZES:
            raise FileNotFoundError(ds)
        return SIZES[ds]

    rates = E.rates_from_rows(rows, sizes)
    assert set(rates) == {("clipseg", "vpt")}
    spi, n = rates[("clipseg", "vpt")]
    assert n == 2 and spi == pytest.approx((100 + 40) / (5 * 100 + 1 * 400))


def _run_dir_with_rows(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    rows = []
    for i, (secs, epochs) in enumerate([(90.0, 1), (270.0, 3)]):
        rows.append(records.trial_row(
            spec="smoke", cell={"vlsm": "clipseg", "learner": "coop", "dataset": "kvasir", "variant": "default"},
            cell_id="clipseg_coop_kvasir", trial_index=i, trial_id=f"t{i}", hp={},
            result={"status": "ok", "seconds": secs, "epochs_run": epochs}, error=None, prov={},
            started_at=None, finished_at=None))
    records.write_rows(rows, RunDir(run).cell_file("clipseg_coop_kvasir"))
    return run


def test_cli_estimate_from_a_run_prints_subtotals_and_total(tmp_path, capsys):
    run = _run_dir_with_rows(tmp_path)
    assert cli.main(["plan", str(SMOKE), "--estimate", "--from", str(run)]) == 0
    out = capsys.readouterr().out
    # Kvasir: 800 train + 100 val; 360 s over 4 epochs -> 0.1 s per image; 4 trials x 3 epochs x 900 images.
    coop = next(line for line in out.splitlines() if line.startswith("clipseg  coop"))
    assert "100.000" in coop  # ms per image
    assert f"{4 * 3 * 900 * 0.1 / 3600:.2f}" in coop  # slot-hours
    assert "maple" in out and "assumed" in out and "total" in out
    assert "not in the run, so assumed: clipseg/maple" in out


def test_cli_estimate_with_a_fixed_rate_and_json(tmp_path, capsys):
    import json

    assert cli.main(["plan", str(SMOKE), "--estimate", "--gpu-seconds-per-image", "0.002", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["gpu_hours"] == pytest.approx(2 * 4 * 3 * 900 * 0.002 / 3600)
    assert {s["learner"] for s in data["subtotals"]} == {"coop", "maple"}
    assert math.isfinite(data["gpu_hours"])


def test_cli_estimate_rejects_bad_input(tmp_path, capsys):
    assert cli.main(["plan", str(SMOKE), "--estimate", "--gpu-seconds-per-image", "0"]) == 2
    assert "--gpu-seconds-per-image" in capsys.readouterr().err
    assert cli.main(["plan", str(SMOKE), "--estimate", "--from", str(tmp_path / "nothing")]) == 2
    assert "no trial Parquet files" in capsys.readouterr().err


def test_feature_cache_saving_lowers_text_only_learners_unless_turned_off():
    def cell(cid, learner, cache=None):
        c = _cell(cid, "clipseg", learner, "a", trials=1, max_epochs=1)
        if cache is not None:
            c.config["data"] = {"feature_cache": cache}
        return c

    est = E.estimate([cell("on", "coop"), cell("off", "coop", "off"), cell("vpt", "vpt")], sizes=SIZES.__getitem__)
    on, off, vpt = est.cells
    assert off.rate.source == "assumed" and on.rate.source == "assumed, feature cache"
    assert off.rate.seconds_per_image == pytest.approx(E.assumed_seconds_per_image("clipseg", "coop"))
    # 80 train (64 % untouched: two transforms, p 0.2 each, independent) + 20 val of 100 images skip the
    # 76 GFLOP frozen vision pass
    saved = 76 * (0.64 * 80 + 20) / 100
    assert on.rate.seconds_per_image / off.rate.seconds_per_image == pytest.approx((78 - saved) / 78)
    assert vpt.rate.seconds_per_image == pytest.approx(E.assumed_seconds_per_image("clipseg", "vpt"))
    assert any("feature cache" in n for n in est.notes)


# The analytic GFLOP per training image that estimate.py held as one table before the cost facts moved into the
# VLSM and learner folders: the catalog's facts must price every shipped pair exactly so.
OLD_TRAIN_GFLOP = {
    ("clipseg", "coop"): 78, ("clipseg", "cocoop"): 169, ("clipseg", "vpt"): 152, ("clipseg", "maple"): 154,
    ("clipseg", "shared_attention"): 154, ("clipseg", "shared_separate"): 154, ("clipseg", "e2e"): 230,
    ("cris", "coop"): 80, ("cris", "cocoop"): 95, ("cris", "e2e"): 120,
}
OLD_CACHED_GFLOP = {("clipseg", "coop"): 76, ("clipseg", "cocoop"): 91, ("cris", "coop"): 40, ("cris", "cocoop"): 40}


def test_cost_facts_in_the_folders_price_every_shipped_pair_as_before():
    from benchmark.plan.matrix import build_plan
    from benchmark.plan.spec import load_spec

    pairs = {(c.vlsm, c.learner) for name in ("table3", "mini")
             for c in build_plan(load_spec(REPO / "experiments" / f"{name}.yaml")).cells}
    assert pairs == set(OLD_TRAIN_GFLOP)
    for vlsm, learner in pairs:
        assert E.train_gflop(vlsm, learner) == OLD_TRAIN_GFLOP[(vlsm, learner)], (vlsm, learner)
        assert E.cached_gflop(vlsm, learner) == OLD_CACHED_GFLOP.get((vlsm, learner), 0), (vlsm, learner)


@pytest.fixture
def unpriced_vlsm():
    """A VLSM registered without cost facts (formerly priced as CLIPSeg, silently)."""
    catalog.register_vlsm("my_vlsm", "My VLSM", {TEXT}, factory="nowhere:factory", image_size=224,
                          max_prompt_depth=6)
    yield "my_vlsm"
    VLSMS.remove("my_vlsm")


def test_a_vlsm_without_cost_facts_is_unpriced_not_priced_as_clipseg(unpriced_vlsm):
    cells = [_cell("c1", unpriced_vlsm, "coop", "a", trials=2, max_epochs=1),
             _cell("c2", "clipseg", "coop", "a", trials=2, max_epochs=1)]
    est = E.estimate(cells, sizes=SIZES.__getitem__)
    mine, clipseg = est.cells
    assert E.train_gflop(unpriced_vlsm, "coop") is None and mine.rate.source == E.UNPRICED
    assert math.isnan(mine.gpu_seconds) and est.gpu_hours == pytest.approx(clipseg.gpu_seconds / 3600)
    assert any(n.startswith("unpriced, left out of the totals: my_vlsm/coop") for n in est.notes)
    text = E.format_estimate(est, "mine")
    assert "my_vlsm  coop" in text and "unpriced" in text
    # a measured or given rate prices it after all
    given = E.estimate(cells, sizes=SIZES.__getitem__, gpu_seconds_per_image=0.01)
    assert all(math.isfinite(c.gpu_seconds) for c in given.cells)


def test_a_learner_names_only_known_cost_terms():
    with pytest.raises(ValueError, match="learner 'my_learner': cost names lora_grad; allowed: text_grad"):
        catalog.register_learner("my_learner", "Mine", object, {TEXT}, model=None, cost=("text_grad", "lora_grad"))
    assert "my_learner" not in catalog.LEARNERS


def test_lora_and_the_adapter_are_priced_per_vlsm_the_same_way():
    """A learner's cost facts may differ by VLSM: what it changes differs (LoRA reaches CRIS's attention pool,
    the adapter only CRIS's text blocks). Each price is the frozen forward plus the gradients back through
    what the learner changes."""
    clipseg, cris = VLSMS.get("clipseg").cost, VLSMS.get("cris").cost
    for learner in ("lora", "adapter"):  # text layers + the ViT from layer 1, as MaPLe
        assert E.train_gflop("clipseg", learner) == clipseg.forward + clipseg.text_grad + clipseg.vision_grad
        assert E.cached_gflop("clipseg", learner) == 0  # it changes the image encoder: nothing to cache
    assert E.train_gflop("cris", "adapter") == E.train_gflop("cris", "coop") == cris.forward + cris.text_grad
    # + ~5 GFLOP back through the ResNet's attention pool (q/k/v and c_proj on 13 x 13 tokens of width 2048)
    assert E.train_gflop("cris", "lora") == cris.forward + cris.text_grad + 5.0
    # The feature cache (as `PromptedVLSM.frozen_image_side` decides): the adapter leaves CRIS's ResNet frozen,
    # LoRA's attention pool makes the image side trainable.
    assert E.cached_gflop("cris", "adapter") == E.cached_gflop("cris", "coop") > 0
    assert E.cached_gflop("cris", "lora") == 0
    est = E.estimate([_cell("c1", "cris", "lora", "a", trials=1), _cell("c2", "cris", "adapter", "a", trials=1)],
                     sizes=SIZES.__getitem__)
    assert [c.rate.source for c in est.cells] == ["assumed", "assumed, feature cache"]


def test_a_learner_is_unpriced_on_a_vlsm_its_cost_mapping_does_not_name(unpriced_vlsm):
    catalog.register_vlsm("other", "Other", {TEXT}, factory="nowhere:factory", image_size=224, max_prompt_depth=6,
                          cost=VLSMS.get("cris").cost)
    catalog.register_learner("my_learner", "Mine", object, {TEXT}, model=None, cost={"other": ("text_grad", 1.5)})
    try:
        assert E.train_gflop("other", "my_learner") == VLSMS.get("cris").cost.forward + VLSMS.get("cris").cost.text_grad + 1.5
        assert E.train_gflop("clipseg", "my_learner") is None
    finally:
        catalog.LEARNERS.remove("my_learner")
        VLSMS.remove("other")
    with pytest.raises(ValueError, match="learner 'bad': cost names lora_grad"):
        catalog.register_learner("bad", "Bad", object, {TEXT}, model=None, cost={"cris": ("lora_grad",)})


def test_json_estimate_with_an_unpriced_cell_is_valid_json(unpriced_vlsm, tmp_path, capsys):
    import json

    import yaml

    raw = yaml.safe_load(SMOKE.read_text())
    raw["axes"]["vlsm"] = ["clipseg", unpriced_vlsm]
    raw["axes"]["learner"] = ["coop"]
    spec = tmp_path / "mine.yaml"
    spec.write_text(yaml.safe_dump(raw))
    assert cli.main(["plan", str(spec), "--estimate", "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    mine = next(s for s in data["subtotals"] if s["vlsm"] == unpriced_vlsm)
    assert mine["seconds_per_image"] is None and mine["source"] == E.UNPRICED
    assert math.isfinite(data["gpu_hours"]) and data["gpu_hours"] > 0
