"""Dice/IoU and the loss against hand-computed cases."""

import math

import pytest
import torch

from trainables.losses import dice_bce_loss, dice_loss
from trainables.metrics import SegMetrics, dice_per_image


def _m(rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(1, 1, 2, 2)


def test_dice_hand_cases():
    empty, full = _m([0, 0, 0, 0]), _m([1, 1, 1, 1])
    half = _m([1, 1, 0, 0])
    assert dice_per_image(empty, empty).item() == 1.0  # empty prediction on an empty mask scores 1
    assert dice_per_image(full, empty).item() == 0.0
    assert dice_per_image(empty, half).item() == 0.0
    # pred 3 px, target 2 px, overlap 2: 2*2 / (2*2 + 1 + 0) = 0.8
    assert dice_per_image(_m([1, 1, 1, 0]), half).item() == pytest.approx(0.8)


def test_threshold_is_inclusive_at_half():
    # sigmoid(0) == 0.5 counts as foreground, exactly as torchmetrics' threshold=0.5 did.
    m = SegMetrics()
    m.update_from_logits(torch.zeros(1, 1, 2, 2), _m([1, 1, 1, 1]))
    assert m.compute() == {"dice": 1.0, "iou": 1.0}
    m.reset()
    m.update_from_logits(torch.full((1, 1, 2, 2), -1e-4), _m([1, 1, 1, 1]))
    assert m.compute()["dice"] == 0.0


def test_dice_is_mean_over_images_and_iou_is_micro():
    m = SegMetrics()
    pred = torch.stack([_m([1, 1, 1, 0])[0], _m([0, 0, 0, 0])[0]])
    target = torch.stack([_m([1, 1, 0, 0])[0], _m([0, 0, 0, 0])[0]])
    m.update(pred, target)
    # images: 0.8 and 1.0 -> 0.9; IoU over all pixels: tp 2, fp 1, fn 0 -> 2/3
    out = m.compute()
    assert out["dice"] == pytest.approx(0.9)
    assert out["iou"] == pytest.approx(2 / 3)
    # accumulating the same split in two batches gives the same numbers
    m2 = SegMetrics()
    m2.update(pred[:1], target[:1])
    m2.update(pred[1:], target[1:])
    assert m2.compute() == pytest.approx(out)


def test_loss_matches_formula():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    target = _m([1, 0, 1, 0])
    p = torch.sigmoid(logits).flatten()
    g = target.flatten()
    dice = 1 - (2 * (p * g).sum() + 1e-5) / (p.sum() + g.sum() + 1e-5)
    bce = -(g * torch.log(p) + (1 - g) * torch.log(1 - p)).mean()
    assert dice_loss(logits, target).item() == pytest.approx(dice.item(), rel=1e-6)
    assert dice_bce_loss(logits, target).item() == pytest.approx((dice + 0.2 * bce).item(), rel=1e-6)
    assert math.isfinite(dice_bce_loss(torch.zeros(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)).item())
