"""The training loop: learning, resume == uninterrupted, divergence, config validation.

These tests drive `fit` with a small stand-in model honouring the PromptedVLSM contract (forward,
tokenize, spec, named_trainable_parameters, param_groups, save_artifact) on synthetic in-memory data,
so they run in seconds and isolate the loop from the VLSM adapters (tested on their own).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import TinySegmenter
from helpers import TinySpec as _Spec
from helpers import blob_data as _data
from helpers import run_fit as _run
from helpers import tiny_cfg as _cfg

from trainables.config import ConfigError
from trainables.trial import TrialConfig, TrialDiverged, fit


def _augmented(root):
    """Real SegmentationDatasets (uint8, augmented train split), built fresh as a new trial process would."""
    from trainables.data import build_dataset

    return {split: build_dataset("mini_polyp", root, split, _Spec.image_size, _Spec.mean, _Spec.std,
                                 normalize=False, seed=0) for split in ("train", "val", "test")}


def test_training_lowers_loss_and_beats_untrained_dice():
    cfg = _cfg()
    final, reports, _, _ = _run(cfg)
    epochs = [r for r in reports if "train_loss" in r]
    assert len(epochs) == 6
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    untrained = _run(_cfg(max_epochs=1, lr=1e-12))[0]
    assert final["best_val_dice"] > untrained["best_val_dice"] + 0.1
    for key in ("test_dice", "test_iou", "test_dice_orig", "test_iou_orig", "objective", "trainable_params"):
        assert key in final and not math.isnan(final[key]), key
    assert final["trainable_params"] == 8 + 8 + 1
    assert final["objective"] == epochs[-1]["val_loss"]  # the original's objective: last-epoch val loss
    for key in ("epoch", "train_loss", "val_loss", "val_dice", "val_iou", "lr", "epoch_seconds", "images_per_s"):
        assert key in epochs[0]


@pytest.mark.parametrize("source", ["in_memory", "augmented_files"])
def test_resume_equals_uninterrupted(tmp_path, source):
    cfg = _cfg()
    data = _data
    if source == "augmented_files":  # random augmentation must replay too
        from trainables.data import make_synthetic

        root = make_synthetic("mini_polyp", tmp_path / "mini_polyp", counts=(16, 4, 4))
        data = lambda: _augmented(root)
    full, full_reports, _, _ = _run(cfg, data=data)
    _, _, saved, _ = _run(cfg, stop_after=2, tmp=tmp_path, data=data)
    resumed, resumed_reports, _, _ = _run(cfg, resume_dir=str(saved[-1]), data=data)
    assert [r["epoch"] for r in resumed_reports if "train_loss" in r] == [3, 4, 5]
    for key in ("test_dice", "test_iou", "best_val_dice", "best_epoch", "objective"):
        assert resumed[key] == pytest.approx(full[key], abs=1e-12), key
    assert resumed_reports[-2]["train_loss"] == pytest.approx(full_reports[-2]["train_loss"], abs=1e-12)


def test_nan_loss_stops_with_location():
    cfg = _cfg(lr=1e-3)

    class Exploding(TinySegmenter):
        def forward(self, *a, **kw):
            return super().forward(*a, **kw) * float("nan")

    with pytest.raises(TrialDiverged, match=r"diverged at epoch 0, step 0, lr 0.001"):
        fit(cfg, lambda m, d: None, model=Exploding(), datasets=_data())


@pytest.mark.parametrize("field, value, match", [
    ("lr", -1.0, "train.lr must be a positive number"),
    ("batch_size", 0, "train.batch_size must be >= 1"),
    ("effective_batch_size", 10, "must be a multiple of train.batch_size"),
    ("min_epochs", 50, r"train.min_epochs must be in \[0, max_epochs\]"),
])
def test_bad_train_config_is_rejected_before_training(field, value, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(**{field: value})


def test_trial_config_rejects_unknown_sections():
    with pytest.raises(ConfigError, match="unknown key"):
        TrialConfig.from_dict({"model": {}, "data": {"dataset": "x", "root": "/x"}, "optim": {}})


def test_e2e_state_includes_batchnorm_statistics():
    # E2E trains the whole VLSM, BatchNorm statistics included: the best-epoch state and checkpoints must
    # restore them with the weights, or the last epoch's statistics would pair with the best epoch's weights.
    from trainables.model import build_model
    from trainables.trial import load_trainable_state, trainable_state

    model = build_model({"vlsm": "cris", "vlsm_config": "tiny", "learner": "e2e"})
    model.train()
    tokens = model.tokenize(["polyp."] * 2)
    x = torch.randn(2, 3, 64, 64)

    def step():
        model(x, tokens["input_ids"], tokens["attention_mask"]).mean().backward()

    step()
    snapshot = trainable_state(model)
    assert any(k.endswith("running_mean") for k in snapshot)
    step()
    name = next(k for k in snapshot if k.endswith("running_mean"))
    current = dict(model.named_buffers())[name]
    assert not torch.equal(current, snapshot[name])  # another train-mode forward moved the statistics
    load_trainable_state(model, snapshot)
    assert torch.equal(dict(model.named_buffers())[name], snapshot[name])


def test_prompt_tuning_state_is_only_the_trainable_parameters():
    from trainables.model import build_model
    from trainables.trial import trainable_state

    model = build_model({"vlsm": "cris", "vlsm_config": "tiny", "learner": "coop"})
    assert set(trainable_state(model)) == {n for n, _ in model.named_trainable_parameters()}


def test_tokens_are_made_once_per_distinct_prompt_list_and_the_cache_is_bounded(monkeypatch):
    from trainables import batches

    model = TinySegmenter()
    calls = []
    real = model.tokenize_batch
    monkeypatch.setattr(model, "tokenize_batch", lambda texts: calls.append(list(texts)) or real(texts))
    cpu = torch.device("cpu")
    first = batches.device_tokens(model, ["polyp."] * 4, cpu)
    again = batches.device_tokens(model, ["polyp."] * 4, cpu)
    assert again is first and calls == [["polyp."] * 4]  # a one-class dataset: tokenized once per trial
    assert first["text_index"].tolist() == [0, 0, 0, 0] and first["input_ids"].shape[0] == 1
    monkeypatch.setattr(batches, "_TOKENS_PER_MODEL", 3)
    for k in range(5):  # list-valued prompts give many keys: the oldest are dropped
        batches.device_tokens(model, [f"prompt {k}."], cpu)
    assert len(batches._TOKENS[model]) == 3
    batches.device_tokens(model, ["polyp."] * 4, cpu)
    assert len(calls) == 7  # evicted, so made again


def test_a_trial_draws_its_preview_from_the_final_model(tmp_path):
    """artifact/preview.png: test images | ground truth | prediction, one row per sample (4 spread over the
    split), from the model the trial tested."""
    from PIL import Image

    from trainables.preview import sample_indices

    torch.manual_seed(0)
    fit(_cfg(max_epochs=2), lambda m, d: None, artifact_dir=str(tmp_path / "artifact"), model=TinySegmenter(),
        datasets=_data())
    png = tmp_path / "artifact" / "preview.png"
    img = Image.open(png)
    assert img.size == (3 * 160, 18 + 4 * 160)
    assert sample_indices(8, 4) == [0, 2, 5, 7] and sample_indices(2, 4) == [0, 1]
    px = np.asarray(img.convert("RGB")).astype(int)
    first = px[18:178]  # sample 0: image | ground truth | prediction

    def green(tile):
        return float(np.mean(tile[..., 1] > tile[..., 0] + 60))

    mask = _data()["test"][0]["mask"][0].numpy()
    assert green(first[:, 0:160]) < 0.02  # the image itself: noise, hardly green
    assert green(first[:, 160:320]) == pytest.approx(mask.mean(), abs=0.03)  # its ground truth, in green


def test_a_corrupt_test_image_fails_before_the_first_epoch(tmp_path):
    from trainables.data import make_synthetic
    from trainables.data.readers import DataError

    root = make_synthetic("mini_polyp", tmp_path / "mini_polyp", counts=(8, 4, 4))
    bad = _augmented(root)["test"].entries[2].image
    bad.write_bytes(bad.read_bytes()[:40])  # truncated, as by an interrupted copy
    reports = []
    with pytest.raises(DataError, match=bad.name):
        fit(_cfg(max_epochs=2), lambda m, d: reports.append(m), model=TinySegmenter(), datasets=_augmented(root))
    assert reports == []  # found before any training


def test_a_permanent_error_ends_the_trial_without_a_retry(monkeypatch):
    """Tune retries a trial that raises (max_failures); a data error would fail the same way again, so the
    trainable reports it as the trial's result and returns."""
    import ray.tune

    import trainables.trial as trial_mod
    from trainables.data.readers import DataError

    reports = []
    monkeypatch.setattr(ray.tune, "report", lambda metrics, checkpoint=None: reports.append(metrics))
    monkeypatch.setattr(ray.tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(trial_mod.TrialConfig, "from_dict", classmethod(lambda cls, d: _cfg()))

    def broken(*a, **k):
        raise DataError("kvasir test sample 2 (x.jpg): cannot decode /data/kvasir/images/x.jpg")

    monkeypatch.setattr(trial_mod, "fit", broken)
    trial_mod.tune_trainable({"trial": {}})  # returns: no exception for Tune to retry
    assert reports[-1]["status"] == "error" and "/data/kvasir/images/x.jpg" in reports[-1]["error"]

    def diverges(*a, **k):
        raise TrialDiverged("diverged at epoch 2, step 0, lr 0.1: loss is nan", epoch=2)

    monkeypatch.setattr(trial_mod, "fit", diverges)
    trial_mod.tune_trainable({"trial": {}})
    assert reports[-1]["status"] == "diverged" and reports[-1]["epochs_run"] == 3
