"""The learnable upsampler ("new last layer", paper §5, reference §2) and its residual combination.

The frozen head of a VLSM turns the decoder's last feature grid into logits; the upsampler reads the same
grid and adds a learnable path: logits = (1 - ρ)·head(x) + ρ·up(x), ρ a free scalar initialised to 0.5
(no sigmoid or clamp, as in the original). The VLSM adapter builds the `up` block (`make_upsampler`),
because only it knows the grid's channels and scale; this module owns ρ and the combination.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# "residual": paper (1-ρ)·head + ρ·up. "sum": head + up, ρ unused (the original's VPT, reference §9.2).
# "unused": the block and ρ exist and count as trainable but never run (the original's CoOp/CoCoOp on
# CLIPSeg, §9.1). `trainables.model` resolves "original" to one of these per (VLSM, learner).
COMBINE_MODES = ("residual", "sum", "unused")


class _ShiftSum(torch.autograd.Function):
    """(N, k·k, H+k-1, W+k-1) taps -> (N, 1, H, W): out[y, x] = sum over i = ky·k + kx of taps[i, y+ky, x+kx].

    Autograd of 25 slices would allocate a zero tensor of the taps' full size per slice in backward; here
    the backward writes each tap's gradient once. Sums in float32 whatever the taps' dtype (25 terms in
    fp16 lose digits a convolution's fp32 accumulator keeps)."""

    @staticmethod
    def forward(ctx, taps: torch.Tensor, k: int) -> torch.Tensor:
        n, _, hp, wp = taps.shape
        h, w = hp - k + 1, wp - k + 1
        out = torch.zeros(n, h, w, dtype=torch.float32, device=taps.device)
        for i in range(k * k):
            ky, kx = divmod(i, k)
            out += taps[:, i, ky:ky + h, kx:kx + w]
        ctx.k, ctx.taps_shape, ctx.taps_dtype = k, taps.shape, taps.dtype
        return out.unsqueeze(1).to(taps.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        k = ctx.k
        h, w = ctx.taps_shape[2] - k + 1, ctx.taps_shape[3] - k + 1
        grad_taps = grad.new_zeros(ctx.taps_shape, dtype=ctx.taps_dtype)
        for i in range(k * k):
            ky, kx = divmod(i, k)
            grad_taps[:, i, ky:ky + h, kx:kx + w] = grad[:, 0]
        return grad_taps, None


def conv_after_upsample(x: torch.Tensor, upsample: nn.Upsample, conv: nn.Conv2d) -> torch.Tensor:
    """`conv(upsample(x))` for a one-output-channel k×k conv with "same" replicate padding, computed fast.

    Why: oneDNN runs a C→1 5×5 convolution on CPU at a few GFLOP/s (the mini benchmark's trials spent most
    of their time in it). The conv's channel mixing commutes with the per-channel bilinear upsampling and
    with replicate padding, so it is done first, at the grid's low resolution, into k·k tap maps; those are
    upsampled, padded and summed at their k·k offsets. The same function to float rounding (tested against
    `conv(upsample(x))`, values and gradients); the same parameters (`conv.weight`, `conv.bias`), so
    checkpoints and parameter counts are unchanged.
    """
    k = conv.kernel_size[0]
    if not (conv.out_channels == 1 and conv.kernel_size == (k, k) and k % 2 == 1 and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "replicate"
            and conv.padding in ("same", (k // 2, k // 2)) and upsample.mode in ("bilinear", "nearest")):
        return conv(upsample(x))  # the shortcut's identities do not hold: compute it as written
    weight = conv.weight[0].permute(1, 2, 0).reshape(k * k, -1)  # (k·k, C): tap i = ky·k + kx
    taps = upsample(torch.einsum("nchw,tc->nthw", x, weight.to(x.dtype)))
    taps = F.pad(taps, (k // 2,) * 4, mode="replicate")
    out = _ShiftSum.apply(taps, k)
    return out + conv.bias.to(out.dtype).view(1, 1, 1, 1)


class PatchUpsampler(nn.Module):
    """CLIPSeg's block: bilinear ×patch (align_corners False), then Conv2d(C→1, 5×5, "same", replicate).

    Input (N, C, g, g) decoder grid → (N, 1, g·patch, g·patch). C = 64 → 64·25 + 1 = 1,601 parameters.
    Computed by `conv_after_upsample` (same function, 5-12× faster on CPU).
    """

    def __init__(self, channels: int, scale: int, kernel_size: int = 5):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False)
        self.conv = nn.Conv2d(channels, 1, kernel_size, padding="same", padding_mode="replicate")

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return conv_after_upsample(grid, self.upsample, self.conv)


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
