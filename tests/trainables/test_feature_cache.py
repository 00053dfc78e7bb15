"""The frozen-feature cache (trainables/feature_cache.py): exact, used only where the image encoder is frozen
and un-prompted, bounded by bytes with val/test first, kept across the trials of a reused worker."""

from __future__ import annotations

import math

import pytest
import torch

from trainables import feature_cache
from trainables.catalog import LEARNERS, is_viable
from trainables.config import ConfigError
from trainables.model import build_model
from trainables.trial import DataConfig, TrialConfig, fit

TINY = {"clipseg": "tiny", "cris": "tiny"}
# What measures the machine, not the model (wall times, throughput, memory): never compared.
TIMING = ("epoch_seconds", "images_per_s", "trial_seconds", "train_seconds", "val_seconds", "peak_rss_mb")
EXTRA = {"shared_attention": {"nhead": 4, "dim_feedforward": 48}, "shared_separate": {"shared_dim": 8}}


@pytest.fixture(autouse=True)
def _fresh_cache():
    feature_cache.clear()
    yield
    feature_cache.clear()


@pytest.fixture(scope="module")
def polyps(tmp_path_factory):
    from trainables.data import make_synthetic

    return make_synthetic("mini_polyp", tmp_path_factory.mktemp("fc") / "mini_polyp", counts=(8, 4, 4))


def _trial(vlsm, learner, root, setting, **train):
    base = dict(lr=3e-3, batch_size=1, effective_batch_size=4, max_epochs=2, min_epochs=1, device="cpu",
                save_artifact=False, eval_original_size=False)
    base.update(train)
    cfg = TrialConfig.from_dict({
        "model": {"vlsm": vlsm, "vlsm_config": TINY[vlsm], "learner": learner,
                  "learner_config": {"prompt_depth": 2, **EXTRA.get(learner, {})} if learner != "e2e" else {}},
        "data": {"dataset": "mini_polyp", "root": str(root), "feature_cache": setting},
        "train": base})
    reports = []
    fit(cfg, lambda metrics, ckpt: reports.append(dict(metrics)))
    return reports


def _results(reports):
    return [{k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()
             if k not in TIMING and not k.startswith("feature_cache")} for r in reports]


# -- the setting ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("off", "off"), (0, "off"), (2, 2e9), ("0.5", 0.5e9),
                                             ("1.5GB", 1.5e9), (False, "off"), (True, "auto")])
def test_setting_parses(value, expected):
    assert feature_cache.parse_setting(value) == expected


@pytest.mark.parametrize("value", ["lots", -1, float("nan"), "-2"])
def test_bad_setting_is_a_clear_error(value):
    with pytest.raises(ConfigError, match="data.feature_cache: expected auto, off or a size in GB"):
        DataConfig(dataset="kvasir", root="/x", feature_cache=value)


def test_trial_config_from_yaml_reads_off_and_refuses_a_list():
    import yaml

    data = yaml.safe_load("{dataset: kvasir, root: /x, feature_cache: off}")  # YAML 1.1: off is false
    assert TrialConfig.from_dict({"model": {}, "data": data}).data.feature_cache is False
    assert feature_cache.budget_bytes(False, torch.device("cpu")) == 0
    assert feature_cache.budget_bytes(2.0, torch.device("cpu")) == 2e9  # a float is GB, not bytes
    assert 0 < feature_cache.budget_bytes("auto", torch.device("cpu")) <= feature_cache.CPU_AUTO_CAP
    with pytest.raises(ConfigError, match="data.feature_cache"):
        TrialConfig.from_dict({"model": {}, "data": {"dataset": "kvasir", "root": "/x", "feature_cache": [1]}})


# -- exactness ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vlsm", ["clipseg", "cris"])
@pytest.mark.parametrize("learner", ["coop", "cocoop"])
def test_cached_image_side_gives_the_same_logits(vlsm, learner):
    model = build_model({"vlsm": vlsm, "vlsm_config": TINY[vlsm], "learner": learner,
                         "learner_config": {"prompt_depth": 2}, "seed": 0}).eval()
    s = model.spec.image_size
    x = torch.randn(3, 3, s, s, generator=torch.Generator().manual_seed(1))
    tokens = model.tokenize_batch(["polyp."] * 3)
    pooled = model.learner.needs_image_features
    with torch.no_grad():
        plain = model(x, **tokens)
        side = model.vlsm.image_side(x, pooled=pooled)
        # from the cache, each image is stored alone and stacked back
        cached = model(torch.zeros_like(x), **tokens, image_side=tuple(torch.stack(list(t.unbind(0))) for t in side))
    assert torch.equal(plain, cached)  # bitwise in fp32; the zero pixels prove the image pass did not run
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain16 = model(x, **tokens).float()
        side16 = tuple(t.to(torch.bfloat16) for t in model.vlsm.image_side(x, pooled=pooled))  # stored bf16
        cached16 = model(x, **tokens, image_side=side16).float()
    torch.testing.assert_close(cached16, plain16, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("vlsm", ["clipseg", "cris"])
@pytest.mark.parametrize("learner", ["coop", "cocoop"])
def test_trial_with_cache_equals_trial_without(vlsm, learner, polyps):
    off = _trial(vlsm, learner, polyps, "off")
    on = _trial(vlsm, learner, polyps, "auto")
    assert not any(k.startswith("feature_cache") for r in off for k in r)
    # Every epoch's metrics and the test results, bitwise (batch 1: no batch-size-dependent rounding).
    assert _results(on) == _results(off)
    epochs = [r for r in on if "val_dice" in r]  # the last epoch's metrics come with the final result
    assert len(epochs) == 2
    assert epochs[0]["feature_cache_hit_rate"] == 0.0  # nothing cached before the first epoch
    # The last epoch comes with the final report, whose hit rate is the whole trial's (both epochs' 12
    # lookups each): at least the 4 val images of the second epoch hit, plus the train draws untouched in
    # both epochs (64 % each since the draws are independent, so fewer than before the augmentation fix).
    later = epochs[1]["feature_cache_hit_rate"]
    assert 4 / 24 <= later <= 0.5, later
    assert epochs[-1]["feature_cache_images"] >= 4 + 1  # val + untouched train images
    assert on[-1]["feature_cache_bytes_per_image"] > 0 and on[-1]["feature_cache_mb"] > 0


def test_batched_trial_agrees_within_rounding(polyps):
    # A train image cached in one shuffled batch is read in another: CPU GEMMs round by batch size (~1e-8).
    off = _trial("clipseg", "coop", polyps, "off", batch_size=4)
    on = _trial("clipseg", "coop", polyps, "auto", batch_size=4)
    for a, b in zip(_results(on), _results(off)):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float):
                assert math.isclose(a[k], b[k], rel_tol=1e-4, abs_tol=1e-6), (k, a[k], b[k])


def test_reused_worker_keeps_the_cache_across_trials(polyps):
    _trial("clipseg", "coop", polyps, "auto", max_epochs=1)
    second = _trial("clipseg", "coop", polyps, "auto", max_epochs=1)
    assert second[0]["feature_cache_hit_rate"] > 0.5  # the same frozen VLSM: val and untouched train hit
    assert second[-1]["feature_cache_hit_rate"] > 0.5  # test too


# -- who uses it ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vlsm", ["clipseg", "cris"])
def test_only_learners_that_leave_the_image_encoder_alone_use_it(vlsm, monkeypatch):
    model = build_model({"vlsm": vlsm, "vlsm_config": TINY[vlsm], "learner": "coop"})
    viable = [n for n in LEARNERS.names() if is_viable(n, model.spec.modalities)]
    users = set()
    for name in viable:
        m = build_model({"vlsm": vlsm, "vlsm_config": TINY[vlsm], "learner": name, "learner_config": EXTRA.get(name, {})})
        if feature_cache.attach(m, "auto", torch.device("cpu"), None) is not None:
            users.add(name)
    # and VLSM-Adapter on CRIS, which changes only its text side (LoRA reaches the ResNet's attention pool)
    assert users == {"coop", "cocoop"} | ({"adapter"} if vlsm == "cris" else set())
    assert "e2e" in viable and ({"vpt", "maple", "shared_attention", "shared_separate"} <= set(viable)) == (vlsm == "clipseg")


@pytest.mark.parametrize("learner", ["vpt", "maple", "shared_attention", "shared_separate", "e2e"])
def test_image_prompting_learners_and_e2e_never_touch_it(learner, polyps, monkeypatch):
    from trainables.vlsm.clipseg.adapter import CLIPSegAdapter

    def boom(*a, **k):
        raise AssertionError("image_side called")

    monkeypatch.setattr(CLIPSegAdapter, "image_side", boom)
    reports = _trial("clipseg", learner, polyps, "auto", max_epochs=1, max_steps_per_epoch=1)
    assert reports and not any(k.startswith("feature_cache") for r in reports for k in r)


# -- the bound ------------------------------------------------------------------------------------------------

def test_bound_keeps_val_test_first_and_never_thrashes():
    owner = torch.nn.Linear(1, 1)
    cache = feature_cache.FeatureCache(owner, torch.device("cpu"), budget=3 * 400)
    t = lambda: (torch.zeros(100),)  # noqa: E731 - 400 bytes
    assert cache.put(("train", 0), t(), evaluation=False)
    assert cache.put(("train", 1), t(), evaluation=False)
    assert cache.put(("train", 2), t(), evaluation=False)
    assert not cache.put(("train", 3), t(), evaluation=False)  # full: a train entry is not stored
    assert cache.get(("train", 0)) is not None  # and evicts nothing
    assert cache.put(("val", 0), t(), evaluation=True)  # val evicts the oldest train entry
    assert cache.get(("train", 0)) is None and cache.get(("train", 1)) is not None
    for i in (1, 2):
        assert cache.put(("val", i), t(), evaluation=True)
    assert not cache.put(("val", 3), t(), evaluation=True)  # all evaluation: nothing more fits
    assert cache.bytes == 1200 and cache.train_bytes == 0


def test_off_and_zero_disable_it(polyps):
    reports = _trial("clipseg", "coop", polyps, 0, max_epochs=1)
    assert not any(k.startswith("feature_cache") for r in reports for k in r)


def test_dataset_marks_exactly_the_draws_that_leave_the_pixels_untouched(polyps):
    import numpy as np

    from trainables.data import build_dataset

    def split(name):
        return build_dataset("mini_polyp", polyps, name, 32, (0.5,) * 3, (0.5,) * 3, normalize=False, seed=3)

    train, val = split("train"), split("val")
    marked = 0
    for epoch in range(4):
        train.set_epoch(epoch)
        for i in range(len(train)):
            s = train[i]
            same = np.array_equal(s["image"].numpy().transpose(1, 2, 0), train.load(i)[0])
            assert bool(s["image_id"]) == same
            marked += same
    assert 0 < marked < 4 * len(train)  # some draws augment, most do not
    assert all(val[i]["image_id"] for i in range(len(val)))  # never augmented
    assert len({val[i]["image_id"] for i in range(len(val))}) == len(val)


def test_a_trial_reads_the_same_features_whatever_ran_before_it_in_the_worker(polyps):
    # A reused Ray worker keeps the cache from trial to trial, and which trials a worker runs depends on
    # scheduling. A trial must therefore get the same result after another trial filled the cache (here
    # with batches of another size) as in a fresh worker: before, its cached features carried the rounding
    # of the earlier trial's batch composition, and results/mini's CoOp/CoCoOp cells differed run to run.
    fresh = _trial("clipseg", "coop", polyps, "auto", batch_size=4, effective_batch_size=4)
    feature_cache.clear()
    _trial("clipseg", "coop", polyps, "auto", batch_size=3, effective_batch_size=3, max_epochs=1)
    after = _trial("clipseg", "coop", polyps, "auto", batch_size=4, effective_batch_size=4)
    assert after[0]["feature_cache_hit_rate"] > 0  # it did read what the first trial cached
    assert _results(after) == _results(fresh)
