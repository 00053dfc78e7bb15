"""Training options for recipes other than the original's (experiments/medvlsm_e2e.yaml): cosine LR schedule,
early stopping on val Dice, gradient-norm clipping (also under fp16), weight decay on every parameter, no
augmentation."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from helpers import BlobData, TinySegmenter
from helpers import tiny_cfg as _cfg
from torch.optim.optimizer import register_optimizer_step_pre_hook

from benchmark.plan.matrix import build_plan
from benchmark.plan.spec import load_spec
from trainables import trial
from trainables.config import ConfigError
from trainables.trial import TrialConfig, fit

REPO = Path(__file__).resolve().parents[3]


def _data():
    return {"train": BlobData(16, 0), "val": BlobData(8, 1), "test": BlobData(8, 2)}


def test_cosine_schedule_steps_once_per_epoch():
    reports = []
    fit(_cfg(scheduler="cosine", cosine_t_max=4, cosine_eta_min=1e-3, lr=1e-2, max_epochs=4, min_epochs=4),
        lambda m, d: reports.append(m), model=TinySegmenter(), datasets=_data())
    lrs = [r["lr"] for r in reports if "train_loss" in r]  # the lr after each epoch's scheduler step
    want = [1e-3 + (1e-2 - 1e-3) * (1 + math.cos(math.pi * (e + 1) / 4)) / 2 for e in range(4)]
    assert lrs == pytest.approx(want)


def test_early_stopping_on_val_dice():
    calls = []
    real = trial.evaluate

    def counting(model, loader, *a, **kw):
        calls.append(1)
        return real(model, loader, *a, **kw)

    data = _data()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trial, "evaluate", counting)
        final = fit(_cfg(lr=1e-12, max_epochs=10, min_epochs=0, early_stop_on="val_dice", early_stop_patience=2),
                    lambda m, d: None, model=TinySegmenter(), datasets=data)
    assert final["epochs_run"] == 3 and len(calls) == 3 + 1  # Dice never improves after epoch 0; + the test


@pytest.mark.parametrize("precision", ["32", "16-mixed"])
def test_gradient_norm_is_clipped_before_the_step(precision):
    norms = []

    def hook(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    handle = register_optimizer_step_pre_hook(hook)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit(_cfg(grad_clip_norm=1e-3, max_epochs=1, min_epochs=0, precision=precision), lambda m, d: None,
                model=TinySegmenter(), datasets=_data())
    finally:
        handle.remove()
    # The raw gradients are far larger: every step sees exactly the clip norm, in true (unscaled) units.
    assert norms and all(n == pytest.approx(1e-3, rel=1e-3) for n in norms)


def test_weight_decay_on_all_parameters_is_one_group():
    groups = []

    def hook(optimizer, args, kwargs):
        groups.append([(len(g["params"]), g["weight_decay"]) for g in optimizer.param_groups])

    handle = register_optimizer_step_pre_hook(hook)
    try:
        fit(_cfg(weight_decay_on="all", max_epochs=1, min_epochs=0), lambda m, d: None, model=TinySegmenter(),
            datasets=_data())
        fit(_cfg(max_epochs=1, min_epochs=0), lambda m, d: None, model=TinySegmenter(), datasets=_data())
    finally:
        handle.remove()
    assert groups[0] == [(3, 1e-4)]  # head weight, head bias, context: all decayed
    assert groups[-1] == [(1, 1e-4), (2, 0.0)]  # default: biases and context vectors are not decayed


@pytest.mark.parametrize("field, value, match", [
    ("scheduler", "step", "train.scheduler must be 'plateau' or 'cosine'"),
    ("early_stop_on", "val_iou", "train.early_stop_on must be"),
    ("grad_clip_norm", 0.0, "train.grad_clip_norm must be > 0"),
    ("weight_decay_on", "some", "train.weight_decay_on must be"),
])
def test_bad_recipe_options_are_rejected(field, value, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(**{field: value})


def test_augment_false_builds_an_unaugmented_train_split(tmp_path):
    from trainables.data import make_synthetic

    root = make_synthetic("mini_polyp", tmp_path / "mini_polyp", counts=(4, 2, 2))

    class Spec:
        image_size, mean, std = 32, (0.5,) * 3, (0.5,) * 3

    def build(augment):
        cfg = TrialConfig.from_dict({"model": {}, "data": {"dataset": "mini_polyp", "root": str(root),
                                                           "augment": augment}})
        return trial.build_datasets(cfg, Spec)["train"]

    assert build(True).augment and not build(False).augment


def _medical_e2e_cells(spec: str):
    """The TrialConfig of each cell of a medvlsm spec: one CLIPSeg E2E trial on each of the eight medical sets."""
    plan = build_plan(load_spec(REPO / "experiments" / spec).with_data_root("/data"))
    assert {c.dataset for c in plan.cells} == {"kvasir", "clinicdb", "bkai", "isic", "dfu", "busi", "camus",
                                               "chexlocalize"}
    for c in plan.cells:
        assert (c.vlsm, c.learner, c.trials) == ("clipseg", "e2e", 1)
        assert c.config["model"]["weights"] == "CIDAS/clipseg-rd64-refined"
        yield TrialConfig.from_dict(c.config)


def test_medvlsm_main_line_spec_carries_its_recipe():
    # experiments/medvlsm_e2e_main.yaml: medvlsm's branch main (the YAML cites commit and file per value)
    for cfg in _medical_e2e_cells("medvlsm_e2e_main.yaml"):
        t = cfg.train
        # bce_weight 0: lambda_ce 0.2 of monai 1.1.0's DiceCELoss weighs a CE term that is 0 on one channel
        assert (t.lr, t.batch_size, t.effective_batch_size, t.bce_weight, t.seed) == (2e-3, 128, 128, 0.0, 42)
        assert (t.scheduler, t.plateau_factor, t.plateau_patience) == ("plateau", 0.1, 5)
        assert (t.early_stop_on, t.early_stop_patience, t.grad_clip_norm) == ("val_dice", 20, 0.5)
        assert not cfg.data.augment and cfg.data.mask_target == "original"


def test_medvlsm_spec_sets_its_recipe_on_the_medical_clipseg_e2e_cells():
    for cfg in _medical_e2e_cells("medvlsm_e2e.yaml"):
        t = cfg.train
        assert (t.lr, t.weight_decay, t.batch_size, t.scheduler, t.cosine_t_max, t.cosine_eta_min) == \
            (1e-3, 1e-3, 32, "cosine", 50, 1e-4)
        # bce_weight 0: lambda_ce 1.0 weighs monai 1.1.0's CE term, which is 0 on one channel
        assert (t.bce_weight, t.grad_clip_norm, t.precision, t.early_stop_on, t.early_stop_patience) == \
            (0.0, 0.5, "16-mixed", "val_dice", 20)
        assert t.weight_decay_on == "all" and not cfg.data.augment and cfg.data.resize == "bilinear_antialias"
        assert cfg.data.prompt_full_stop is False
