"""The paper's loss: Dice + 0.2 * BCE on logits (MONAI DiceCELoss(sigmoid=True, lambda_ce=0.2) semantics).

Dice is computed per sample on sigmoid probabilities with 1e-5 smoothing in numerator and denominator
(MONAI's defaults, not squared, batch=False) and averaged over the batch; BCE is the mean over all pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    p = torch.sigmoid(logits.float()).flatten(1)
    g = target.float().flatten(1)
    inter = (p * g).sum(1)
    return (1 - (2 * inter + smooth) / (p.sum(1) + g.sum(1) + smooth)).mean()


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 0.2,
                  smooth: float = 1e-5) -> torch.Tensor:
    # fp32 for the reductions: under autocast the logits may be bf16/fp16, whose sums over 352^2 pixels
    # lose precision.
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return dice_loss(logits, target, smooth) + bce_weight * bce
