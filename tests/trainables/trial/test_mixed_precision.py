"""Gradient accumulation and mixed precision in `fit`, on CPU: the code a GPU runs, covered by CI.

PyTorch runs autocast in bf16 and fp16 on CPU and has a CPU GradScaler, so the fp16 path of the paper-scale
sweep (`16-mixed`, the original's precision; also what `auto` picks on GPUs without bf16) is exercised here:
- the accumulation tail: one optimizer step per complete group, one for an incomplete last group, never one
  on an empty group (the fp16 GradScaler raises "No inf checks were recorded for this optimizer" there);
- resume from a checkpoint that holds the scaler's state;
- a step whose gradient is inf/NaN: the scaler skips it, halves its scale, and training goes on.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from helpers import BlobData, TinySegmenter
from helpers import run_fit as _run
from helpers import tiny_cfg as _cfg
from torch.optim.optimizer import register_optimizer_step_pre_hook

from trainables import trial
from trainables.trial import fit

PRECISIONS = ["32", "bf16-mixed", "16-mixed"]


class CountingSegmenter(TinySegmenter):
    """Counts the images of every training forward, so a step hook can say how many each step saw."""

    def __init__(self):
        super().__init__()
        self.pending = 0

    def forward(self, pixel_values, *a, **kw):
        if self.training:
            self.pending += len(pixel_values)
        return super().forward(pixel_values, *a, **kw)


@pytest.fixture
def step_log():
    """Images seen by each optimizer step (all optimizers; steps the scaler skips never reach the hook)."""
    log: list[int] = []
    models: list[CountingSegmenter] = []

    def hook(optimizer, args, kwargs):
        if models:
            log.append(models[0].pending)
            models[0].pending = 0

    handle = register_optimizer_step_pre_hook(hook)
    yield log, models
    handle.remove()


def _groups(n: int, batch: int, accumulate: int) -> list[int]:
    """Images per optimizer step of one epoch: batches of `batch` (the last may be short), `accumulate` a group."""
    batches = [min(batch, n - s) for s in range(0, n, batch)]
    return [sum(batches[g : g + accumulate]) for g in range(0, len(batches), accumulate)]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("n, batch, accumulate", [
    (24, 4, 2),   # whole batches, whole groups
    (10, 4, 2),   # partial last batch inside a partial last group: 8 | 2
    (14, 4, 2),   # partial last batch completes the last group: 8 | 6 (the old code stepped once more, on nothing)
    (6, 4, 1),    # no accumulation, partial last batch: 4 | 2 (same)
    (11, 2, 3),   # 6 | 5: partial batch closes the group
    (9, 2, 4),    # 8 | 1: a group of one short batch
    (3, 4, 2),    # the whole epoch is one short batch
])
def test_one_step_per_accumulation_group_never_an_empty_one(step_log, precision, n, batch, accumulate):
    log, models = step_log
    model = CountingSegmenter()
    models.append(model)
    data = {"train": BlobData(n, 0), "val": BlobData(4, 1), "test": BlobData(4, 2)}
    cfg = _cfg(batch_size=batch, effective_batch_size=batch * accumulate, max_epochs=2, lr=1e-2,
               precision=precision)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CPU mixed-precision notice
        final = fit(cfg, lambda m, d: None, model=model, datasets=data)
    assert log == _groups(n, batch, accumulate) * 2
    assert final["status"] == "ok" and math.isfinite(final["test_loss"])


def test_max_steps_per_epoch_truncates_at_whole_groups(step_log):
    log, models = step_log
    model = CountingSegmenter()
    models.append(model)
    data = {"train": BlobData(40, 0), "val": BlobData(4, 1), "test": BlobData(4, 2)}
    cfg = _cfg(batch_size=4, effective_batch_size=8, max_epochs=2, max_steps_per_epoch=2, precision="16-mixed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(cfg, lambda m, d: None, model=model, datasets=data)
    assert log == [8, 8] * 2


def test_mixed_precision_on_cpu_resolves_and_warns_once(monkeypatch):
    monkeypatch.setattr(trial, "_CPU_AMP_WARNED", set())
    cpu = torch.device("cpu")
    with pytest.warns(UserWarning, match="16-mixed on CPU is for testing"):
        assert trial.resolve_precision(trial.TrainConfig(precision="16-mixed"), cpu) == (torch.float16, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second resolve says nothing more
        assert trial.resolve_precision(trial.TrainConfig(precision="16-mixed"), cpu) == (torch.float16, True)
    with pytest.warns(UserWarning, match="bf16-mixed on CPU is for testing"):
        assert trial.resolve_precision(trial.TrainConfig(precision="bf16-mixed"), cpu) == (torch.bfloat16, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert trial.resolve_precision(trial.TrainConfig(), cpu) == (None, False)  # auto stays fp32 on CPU
        assert trial.resolve_precision(trial.TrainConfig(precision="32"), cpu) == (None, False)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_learns_on_cpu(precision):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        final, reports, _, _ = _run(_cfg(precision=precision, max_epochs=4))
    epochs = [r for r in reports if "train_loss" in r]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert final["status"] == "ok" and final["best_val_dice"] > 0.3


class PoisonedGrad(torch.autograd.Function):
    """Identity forward; the backward of chosen training forwards returns inf/NaN gradients."""

    @staticmethod
    def forward(ctx, x, poison):
        ctx.poison = poison
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return (g * ctx.poison if ctx.poison is not None else g), None


class PoisonedSegmenter(CountingSegmenter):
    def __init__(self, poison_at: dict[int, float]):
        super().__init__()
        self.poison_at = poison_at  # training-forward index -> inf or nan
        self.forwards = 0

    def forward(self, pixel_values, input_ids, attention_mask, text_index=None):
        out = super().forward(pixel_values, input_ids, attention_mask, text_index)
        if not self.training:
            return out
        poison = self.poison_at.get(self.forwards)
        self.forwards += 1
        return PoisonedGrad.apply(out, poison)


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_fp16_scaler_skips_a_step_with_a_non_finite_gradient(step_log, bad):
    log, models = step_log
    # 24 images, batch 4, accumulate 2: 3 groups per epoch; the third forward (first batch of group 2) of
    # epoch 0 gets a non-finite gradient. The loss itself stays finite, so the trial must not "diverge".
    model = PoisonedSegmenter({2: bad})
    models.append(model)
    saved = {}

    def report(metrics, ckpt_dir):
        if ckpt_dir is not None and metrics.get("epoch") == 0:
            saved.update(torch.load(f"{ckpt_dir}/{trial.CHECKPOINT_FILE}", weights_only=True))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        final = fit(_cfg(precision="16-mixed", max_epochs=2, lr=1e-2), report, model=model, datasets=_blobs())
    # Epoch 0's second group was skipped: no optimizer step, so its 8 images show up in the next step's
    # count (the hook counts images since the last step that ran). Nothing else is skipped.
    assert log == [8, 16] + [8, 8, 8]
    assert saved["scaler"]["scale"] == 2.0**15  # halved once from the default 2**16
    assert all(torch.isfinite(p).all() for _, p in model.named_trainable_parameters())
    assert final["status"] == "ok" and math.isfinite(final["test_loss"])


def _blobs():
    return {"train": BlobData(24, 0), "val": BlobData(8, 1), "test": BlobData(8, 2)}


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_resume_equals_uninterrupted(tmp_path, monkeypatch, precision):
    # An inf gradient early on moves the fp16 scaler off its default scale, so a resume that failed to
    # restore the scaler's state would train with a different scale than the uninterrupted run.
    poison = {1: math.inf} if precision == "16-mixed" else {}  # bf16 has no scaler: an inf would diverge
    monkeypatch.setattr("helpers.TinySegmenter", lambda: PoisonedSegmenter(dict(poison)))
    cfg = _cfg(precision=precision)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full, full_reports, _, _ = _run(cfg, data=_blobs)
        if precision == "16-mixed":
            assert full["status"] == "ok"
        _, _, saved, _ = _run(cfg, stop_after=2, tmp=tmp_path, data=_blobs)
        ck = torch.load(saved[-1] / trial.CHECKPOINT_FILE, weights_only=True)
        if precision == "16-mixed":
            assert ck["scaler"]["scale"] == 2.0**15
        poison.clear()  # the resumed process starts past the poisoned forward
        resumed, resumed_reports, _, _ = _run(cfg, resume_dir=str(saved[-1]), data=_blobs)
    assert [r["epoch"] for r in resumed_reports if "train_loss" in r] == [3, 4, 5]
    for key in ("test_dice", "test_iou", "best_val_dice", "best_epoch", "objective"):
        assert resumed[key] == pytest.approx(full[key], abs=1e-12), key
    assert resumed_reports[-2]["train_loss"] == pytest.approx(full_reports[-2]["train_loss"], abs=1e-12)
