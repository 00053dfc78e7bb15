"""The contract between a VLSM adapter and the rest of the project.

One adapter per VLSM (never a VLSM subclass per learner). An adapter wraps a frozen pretrained model and
is the *only* place prompts enter it: it receives a `Prompts` object (per-depth tensors produced by a
context learner) and injects them at the layers the paper describes. The trial code never branches on
the VLSM: it calls `tokenize`, `forward` and `make_upsampler` through this interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from trainables.registry import Registry

TEXT = "text"
VISION = "vision"


@dataclass(frozen=True)
class VLSMSpec:
    """Static facts about a VLSM that learners and the data pipeline need."""

    name: str
    modalities: frozenset[str]  # encoders that accept prompts: {"text", "vision"} or {"text"}
    text_width: int  # width of the text transformer's residual stream (512 for CLIP)
    vision_width: int | None  # width of the vision transformer (768 for ViT-B), None without one
    max_prompt_depth: int  # deepest layer count that can receive fresh prompts
    image_size: int  # input resolution (352 CLIPSeg, 416 CRIS)
    image_feature_dim: int  # dimension of `image_features()` (CoCoOp's meta-net input)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass
class Prompts:
    """Prompt tensors for one forward pass, indexed by depth (row k enters layer k+1).

    Each entry is either (B, width), shared by the batch, or (N, B, width), per sample (CoCoOp).
    `text` / `vision` is None when the learner does not prompt that encoder.
    """

    text: list[torch.Tensor] | None = None
    vision: list[torch.Tensor] | None = None

    @property
    def depth(self) -> int:
        return len(self.text or self.vision or [])

    @property
    def num_tokens(self) -> int:
        rows = self.text or self.vision
        return 0 if not rows else rows[0].shape[-2]


@dataclass
class SegmentationOutput:
    logits: torch.Tensor  # (N, 1, S, S), the frozen head's output
    tap: torch.Tensor  # the decoder feature map the learnable upsampler reads


class VLSMAdapter(nn.Module):
    """Base class of the adapters. Subclasses set `spec` and implement the methods below."""

    spec: VLSMSpec

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """`input_ids` and `attention_mask` (N, L), padded on the right to the longest text."""
        raise NotImplementedError

    def embed_tokens(self, text: str) -> torch.Tensor:
        """Frozen token embeddings of `text` without special tokens, (T, text_width); for "a photo of a"."""
        raise NotImplementedError

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen, un-prompted global image embedding (N, image_feature_dim) (CoCoOp's meta-net input)."""
        raise NotImplementedError

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompts: Prompts | None = None,
    ) -> SegmentationOutput:
        raise NotImplementedError

    def make_upsampler(self) -> nn.Module:
        """A fresh learnable upsampler mapping `SegmentationOutput.tap` to logits (N, 1, S, S)."""
        raise NotImplementedError

    def encoder_modules(self) -> list[nn.Module]:
        """The pretrained text/vision encoders (E2E with `train_encoders: false` freezes exactly these).
        Optional: an adapter without it cannot run that E2E variant."""
        raise NotImplementedError


# name -> factory(weights: str | None, **options) -> VLSMAdapter
VLSMS: Registry[Callable[..., VLSMAdapter]] = Registry("VLSM")
