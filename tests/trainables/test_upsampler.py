"""The learnable upsampler's fast form: `conv_after_upsample` must be `conv(upsample(x))`, values and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.upsampler import PatchUpsampler, conv_after_upsample
from trainables.vlsm.cris.model import CRISUpsampler


def _naive(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    reduced = block.reduce(x) if hasattr(block, "reduce") else x
    return block.conv(block.upsample(reduced))


def _grads(block: nn.Module, x: torch.Tensor, out: torch.Tensor) -> list[torch.Tensor]:
    # A loss that weighs every output pixel differently, so a tap summed at the wrong offset shows.
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    return torch.autograd.grad((out * weights).square().sum(), [x, *block.parameters()])


@pytest.mark.parametrize("make, shape", [
    (lambda: PatchUpsampler(16, 8), (3, 16, 6, 6)),           # CLIPSeg: ×patch scale
    (lambda: PatchUpsampler(8, 4, kernel_size=3), (2, 8, 5, 7)),  # another kernel, a non-square grid
    (lambda: CRISUpsampler(32, 8, 40, 5), (2, 32, 5, 5)),      # CRIS: 1×1 reduce, then a fixed output size
])
def test_fast_form_equals_conv_of_upsample(make, shape):
    torch.manual_seed(0)
    block = make()
    x = torch.randn(shape, requires_grad=True)
    fast, naive = block(x), _naive(block, x)
    assert fast.shape == naive.shape
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-5)
    for got, want in zip(_grads(block, x, fast), _grads(block, x, naive)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_conv_the_shortcut_does_not_cover_is_computed_as_written():
    torch.manual_seed(0)
    up = nn.Upsample(scale_factor=2, mode="bilinear")
    x = torch.randn(2, 4, 5, 5)
    for conv in (nn.Conv2d(4, 2, 3, padding="same", padding_mode="replicate"),  # two output channels
                 nn.Conv2d(4, 1, 3, padding="same"),                           # zero padding
                 nn.Conv2d(4, 1, 3, stride=2, padding=1, padding_mode="replicate")):
        torch.testing.assert_close(conv_after_upsample(x, up, conv), conv(up(x)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fast_form_under_cpu_autocast(dtype):
    # The trial's mixed-precision path: whatever dtype autocast gives the taps, the sum runs in float32 and
    # the result stays within the lower precision's rounding of the convolution's.
    torch.manual_seed(0)
    block = PatchUpsampler(16, 8)
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        fast = block(x)
        naive = _naive(block, x)
    torch.testing.assert_close(fast.float(), naive.float(), rtol=0.05, atol=0.05)
    fast.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert block.conv.weight.grad is not None and block.conv.weight.grad.abs().sum() > 0
