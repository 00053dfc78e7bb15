"""The learnable upsampler ("new last layer", paper §5, reference §2) and its residual combination.

The frozen head of a VLSM turns the decoder's last feature grid into logits; the upsampler reads the same
grid and adds a learnable path: logits = (1 - ρ)·head(x) + ρ·up(x), ρ a free scalar initialised to 0.5
(no sigmoid or clamp, as in the original). The VLSM adapter builds the `up` block (`make_upsampler`),
because only it knows the grid's channels and scale; this module owns ρ and the combination.
"""

from __future__ import annotations

import torch
from torch import nn

# "residual": paper (1-ρ)·head + ρ·up. "sum": head + up, ρ unused (the original's VPT, reference §9.2).
# "unused": the block and ρ exist and count as trainable but never run (the original's CoOp/CoCoOp on
# CLIPSeg, §9.1). `trainables.model` resolves "original" to one of these per (VLSM, learner).
COMBINE_MODES = ("residual", "sum", "unused")


class PatchUpsampler(nn.Module):
    """CLIPSeg's block: bilinear ×patch (align_corners False), then Conv2d(C→1, 5×5, "same", replicate).

    Input (N, C, g, g) decoder grid → (N, 1, g·patch, g·patch). C = 64 → 64·25 + 1 = 1,601 parameters.
    """

    def __init__(self, channels: int, scale: int, kernel_size: int = 5):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False)
        self.conv = nn.Conv2d(channels, 1, kernel_size, padding="same", padding_mode="replicate")

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.conv(self.upsample(grid))


class ResidualUpsampler(nn.Module):
    """`block` (the VLSM's upsampler) plus the residual ratio ρ; combines it with the frozen head."""

    def __init__(self, block: nn.Module, mode: str = "residual", ratio: float = 0.5):
        super().__init__()
        if mode not in COMBINE_MODES:
            raise ValueError(f"upsampler mode {mode!r}; allowed: {', '.join(COMBINE_MODES)}")
        self.block = block
        self.residual_ratio = nn.Parameter(torch.tensor(float(ratio)))
        self.mode = mode

    def forward(self, head_logits: torch.Tensor, tap: torch.Tensor) -> torch.Tensor:
        if self.mode == "unused":
            return head_logits
        up = self.block(tap)  # (N, 1, S, S), same size as the head's logits
        if up.shape != head_logits.shape:
            raise RuntimeError(f"upsampler output {tuple(up.shape)} != head logits {tuple(head_logits.shape)}")
        if self.mode == "sum":
            return head_logits + up
        rho = self.residual_ratio
        return (1 - rho) * head_logits + rho * up

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
