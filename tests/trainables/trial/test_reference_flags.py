"""experiments/reference.yaml is the original's behaviour: each of its training settings is a named flag that
does what the original did (fp16, JPEG-mask targets, Cityscapes validated twice per epoch, CLIPSeg E2E
training only the decoder, CRIS E2E with dropout 0.2)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import BlobData, TinySegmenter
from helpers import tiny_cfg as _cfg

from benchmark.plan.matrix import build_plan
from benchmark.plan.spec import load_spec
from trainables import trial
from trainables.batches import mask_targets
from trainables.config import ConfigError
from trainables.trial import DataConfig, TrialConfig, fit

REPO = Path(__file__).resolve().parents[3]
KVASIR_MINI = REPO.parent / "shared" / "data" / "kvasir_seg_mini"


def test_reference_spec_sets_each_original_behaviour_on_the_right_cells():
    plan = build_plan(load_spec(REPO / "experiments" / "reference.yaml").with_data_root("/data"))
    assert len(plan.cells) == 100
    for c in plan.cells:
        TrialConfig.from_dict(c.config)  # every field name is one the trial knows
        assert c.config["train"]["precision"] == "16-mixed"
        assert c.config["data"]["mask_target"] == "original"
        assert c.config["train"].get("val_checks_per_epoch", 1) == (2 if c.dataset == "cityscapes" else 1)
        lc, opts = c.config["model"]["learner_config"], c.config["model"].get("vlsm_options", {})
        if c.learner == "e2e" and c.vlsm == "clipseg":
            assert lc == {"train_encoders": False}
        if c.vlsm == "cris":
            assert opts.get("compat_extra_first_row") is True
            assert opts.get("dropout") == (0.2 if c.learner == "e2e" else None)


def test_cris_dropout_option_sets_the_decoder_dropout():
    from trainables.vlsm.cris.adapter import cris_factory

    def rates(adapter):
        return {m.p for m in adapter.model.decoder.modules() if isinstance(m, torch.nn.Dropout)}

    assert rates(cris_factory(config="tiny")) == {0.0}
    assert rates(cris_factory(config="tiny", dropout=0.2)) == {0.2}
    with pytest.raises(ConfigError, match="CRIS option dropout: expected a number in \\[0, 1\\)"):
        cris_factory(config="tiny", dropout=1.5)


def test_mask_targets_original_is_soft_for_the_loss_and_only_255_for_the_metrics():
    grey = torch.tensor([0.0, 100.0, 200.0, 254.0, 255.0])
    loss_t, metric_t = mask_targets(grey, "original")
    assert torch.allclose(loss_t, grey / 255)
    assert metric_t.tolist() == [0, 0, 0, 0, 1]
    binary = (grey > 127).float()
    assert all(t is binary for t in mask_targets(binary, "binary"))
    with pytest.raises(ConfigError, match="data.mask_target must be 'binary' or 'original'"):
        DataConfig(dataset="kvasir", root="/x", mask_target="soft")


class GreyBlobs(BlobData):
    """Blobs whose masks are JPEG-like grey: 255 inside, 200 on a one-pixel rim, 0 outside."""

    def __init__(self, n, seed):
        super().__init__(n, seed)
        for item in self.items:
            m = item["mask"]
            rim = torch.nn.functional.max_pool2d(m, 3, 1, 1) - m
            item["mask"] = m * 255 + rim * 200


class Oracle(TinySegmenter):
    """Predicts foreground exactly where grey > 127 (the binary target), from the image it is given."""

    def forward(self, pixel_values, input_ids, attention_mask, text_index=None):
        return (pixel_values[:, :1] > 0).float() * 20 - 10 + 0 * self.context.sum()


def test_original_mask_target_scores_a_perfect_binary_prediction_below_one():
    data = GreyBlobs(8, 0)
    for item in data.items:  # the image encodes the binary mask, so the oracle reproduces grey > 127
        item["image"] = ((item["mask"] > 127).float() * 2 - 1).expand(3, -1, -1).clone()
    loader = trial.make_loader(data, 4, False, 0, 0)
    model = Oracle()
    binary = trial.evaluate(model, _binarised(loader), "cpu", None, 0.2)
    original = trial.evaluate(model, loader, "cpu", None, 0.2, mask_target="original")
    assert binary["dice"] == pytest.approx(1.0)
    assert original["dice"] < 0.95  # the rim (200) is background for the original's metric
    assert original["loss"] != pytest.approx(binary["loss"])


def _binarised(loader):
    for batch in loader:
        yield {**batch, "mask": (batch["mask"] > 127).float()}


@pytest.mark.skipif(not KVASIR_MINI.is_dir(), reason="kvasir_seg_mini not available")
def test_grey_masks_of_real_jpeg_masks_threshold_to_the_binary_ones():
    from trainables.data import build_dataset

    kw = dict(image_size=64, mean=(0.5,) * 3, std=(0.5,) * 3, augment=False, normalize=False, cache=False)
    binary = build_dataset("kvasir", KVASIR_MINI, "val", **kw)
    grey = build_dataset("kvasir", KVASIR_MINI, "val", grey_masks=True, **kw)
    values = np.concatenate([grey[i]["mask"].numpy().ravel() for i in range(len(grey))])
    assert ((values > 0) & (values < 255)).any()  # JPEG noise: the original's metric ignores those pixels
    for i in range(len(grey)):
        assert torch.equal((grey[i]["mask"] > 127).to(torch.uint8), binary[i]["mask"])


def test_fit_trains_on_grey_masks_with_the_original_target():
    cfg = TrialConfig(model=None, data=DataConfig(dataset="blobs", root="/x", mask_target="original"),
                      train=_cfg(max_epochs=3).train)
    final = fit(cfg, lambda m, d: None, model=TinySegmenter(),
                datasets={"train": GreyBlobs(24, 0), "val": GreyBlobs(8, 1), "test": GreyBlobs(8, 2)})
    assert final["status"] == "ok" and 0 < final["best_val_dice"] <= 1


def test_two_validations_per_epoch_count_for_early_stopping_and_the_best_state(monkeypatch):
    calls = []
    real = trial.evaluate

    def counting(model, loader, *a, **kw):
        calls.append(loader.dataset)
        return real(model, loader, *a, **kw)

    monkeypatch.setattr(trial, "evaluate", counting)
    data = {"train": BlobData(24, 0), "val": BlobData(8, 1), "test": BlobData(8, 2)}
    states = []

    def report(metrics, ckpt_dir):
        if ckpt_dir is not None and (Path(ckpt_dir) / trial.CHECKPOINT_FILE).is_file():  # not the final one
            states.append(torch.load(Path(ckpt_dir) / trial.CHECKPOINT_FILE, weights_only=False)["loop"])

    # lr ~0: the val loss never improves, so every validation is a "bad" one after the first.
    # (4 epochs: a finished trial's checkpoint holds no loop state, so epochs 0-2 are read from theirs)
    cfg = _cfg(lr=1e-12, max_epochs=4, min_epochs=0, early_stop_patience=100, val_checks_per_epoch=2)
    fit(cfg, report, model=TinySegmenter(), datasets=data)
    val_calls = [d for d in calls if d is data["val"]]
    assert len(val_calls) == 8 and calls[-1] is data["test"]
    assert [s["bad_epochs"] for s in states[:3]] == [1, 3, 5]  # counts validations, as Lightning's patience
    # Early stopping after `patience` validations stops after 1.5 epochs' worth of checks.
    calls.clear()
    fit(_cfg(lr=1e-12, max_epochs=6, min_epochs=0, early_stop_patience=3, val_checks_per_epoch=2),
        lambda m, d: None, model=TinySegmenter(), datasets=data)
    assert len([d for d in calls if d is data["val"]]) == 4  # epochs 0 and 1, then patience is spent
    with pytest.raises(ConfigError, match="train.val_checks_per_epoch must be >= 1"):
        _cfg(val_checks_per_epoch=0)


def test_reference_spec_runs_on_cpu_in_fp16_at_its_settings(tmp_path):
    """One E2E CRIS step of the reference settings on the tiny config: fp16 on CPU, grey masks, dropout 0.2."""
    from trainables.data import make_synthetic

    root = make_synthetic("mini_polyp", tmp_path / "mini_polyp", counts=(6, 2, 2))
    cfg = TrialConfig.from_dict({
        "model": {"vlsm": "cris", "vlsm_config": "tiny", "learner": "e2e", "vlsm_options": {"dropout": 0.2}},
        "data": {"dataset": "mini_polyp", "root": str(root), "mask_target": "original"},
        "train": {"precision": "16-mixed", "batch_size": 4, "effective_batch_size": 8, "max_epochs": 1,
                  "min_epochs": 0, "device": "cpu", "save_artifact": False, "val_checks_per_epoch": 2}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        final = fit(cfg, lambda m, d: None)
    assert final["status"] == "ok"
