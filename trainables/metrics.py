"""Segmentation metrics exactly as the original computed them (reference spec §5.6).

- Dice: per image, foreground only, prediction positive iff sigmoid(logit) >= 0.5 (i.e. logit >= 0);
  an image with an empty prediction and an empty mask scores 1; averaged over the images of the split.
- IoU: micro over all pixels of the split, TP / (TP + FP + FN), 1 when everything is empty.

`SegMetrics` accumulates on the device (no host sync per batch) and is read once per split.
"""

from __future__ import annotations

import torch


def confusion_per_image(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TP, FP, FN per image for boolean-able tensors of shape (N, ...)."""
    p = pred.bool().flatten(1)
    g = target.bool().flatten(1)
    tp = (p & g).sum(1)
    fp = (p & ~g).sum(1)
    fn = (~p & g).sum(1)
    return tp, fp, fn


def dice_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    tp, fp, fn = confusion_per_image(pred, target)
    denom = (2 * tp + fp + fn).double()
    return torch.where(denom > 0, 2 * tp.double() / denom.clamp(min=1), torch.ones_like(denom))


class SegMetrics:
    """Accumulates per-image Dice and split-level (micro) IoU from logits or binary predictions."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        z = lambda: torch.zeros((), dtype=torch.float64, device=self.device)  # noqa: E731
        self.dice_sum, self.count, self.tp, self.fp, self.fn = z(), z(), z(), z(), z()

    @torch.no_grad()
    def update_from_logits(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.update(logits >= 0, target > 0.5)  # sigmoid(x) >= 0.5  <=>  x >= 0

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        tp, fp, fn = confusion_per_image(pred, target)
        denom = (2 * tp + fp + fn).double()
        dice = torch.where(denom > 0, 2 * tp.double() / denom.clamp(min=1), torch.ones_like(denom))
        self.dice_sum += dice.sum()
        self.count += dice.numel()
        self.tp += tp.sum()
        self.fp += fp.sum()
        self.fn += fn.sum()

    def compute(self) -> dict[str, float]:
        count = float(self.count)
        denom = float(self.tp + self.fp + self.fn)
        return {
            "dice": float(self.dice_sum) / count if count else float("nan"),
            "iou": float(self.tp) / denom if denom else 1.0,
        }
