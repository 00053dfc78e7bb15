"""The contract between a VLSM adapter and the rest of the project.

One adapter per VLSM (never a VLSM subclass per learner). An adapter wraps a frozen pretrained model and
is the *only* place prompts enter it: it receives a `Prompts` object (per-depth tensors produced by a
context learner) and injects them at the layers the paper describes. The trial code never branches on
the VLSM: it calls `tokenize`, `forward` and `make_upsampler` through this interface.

Two things in `forward`'s contract exist for speed, since a prompt-tuning step is mostly frozen-encoder
arithmetic:
- `prompts` may be a `PromptFn` (CoCoOp): a function of the frozen, un-prompted image features. The
  adapter computes those features from its own image pass, so the frozen image encoder runs once per batch
  rather than once for the features and again for the segmentation.
- `text_index` (N,) maps each image to a row of `input_ids`, so a batch whose images share a prompt (a
  one-class dataset: all of them) runs the text encoder once per distinct prompt, not once per image.
  Prompts that differ per image (CoCoOp) are expanded to one row per image first.
- `image_side`, when given, replaces the adapter's frozen, un-prompted image pass: the tensors its own
  `image_side(pixel_values, pooled)` returns, taken from the frozen-feature cache (`trainables.feature_cache`)
  for learners that do not prompt the image encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


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


# Image-conditioned prompts: (N, image_feature_dim) frozen, un-prompted image features -> Prompts.
PromptFn = Callable[[torch.Tensor], Prompts]


def per_image_text(prompts: Prompts | None) -> bool:
    """True when the text prompts differ per image ((N, B, W) rows), so text cannot be shared."""
    return prompts is not None and prompts.text is not None and any(r.dim() == 3 for r in prompts.text)


def expand_text(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, text_index: torch.Tensor | None,
                prompts: Prompts | None):
    """The token rows to encode and the index still to apply to the encoder's output.

    With shared (or no) text prompts the distinct rows are encoded and gathered afterwards; with per-image
    prompts every image needs its own row, so the rows are gathered first."""
    if text_index is not None and per_image_text(prompts):
        mask = None if attention_mask is None else attention_mask[text_index]
        return input_ids[text_index], mask, None
    return input_ids, attention_mask, text_index


@dataclass(frozen=True)
class EncoderLayer:
    """One attention layer of a pretrained encoder, as module names relative to the VLSM adapter.

    `projections`: "q", "k", "v", "o" -> `nn.Linear` modules that the adapter's forward *calls* (so that a
    wrapper of the module, e.g. a LoRA layer, takes effect). `attention` / `mlp`: the self-attention and MLP
    sublayers whose (first) output is added to the residual stream, or None where the layer has no such
    sublayer (CRIS's ResNet attention pool)."""

    projections: dict[str, str]
    attention: str | None = None
    mlp: str | None = None
    width: int = 0


@dataclass(frozen=True)
class AttachPoints:
    """Where learners that change the frozen encoders (LoRA, adapters) attach, instead of producing prompts.

    `layers`: per modality ("text", "vision"), the encoder's attention layers that `forward` runs, in order.
    `decoder_taps`: 0-based indices of the vision layers whose outputs the decoder reads (CLIPSeg's
    `extract_layers`); empty when the decoder reads only the encoders' last outputs. `condition`: an
    identity module the adapter applies to the text conditioning vector (width `condition_width`) before the
    decoder reads it. `taps` / `text_taps`: empty `nn.ModuleList`s (None: not offered) that a learner fills
    with one module per decoder tap: `taps[i]` maps tap i before the decoder reads it (the vision stream
    is untouched), `text_taps[i]` maps the EOS state of text layer `decoder_taps[i]` to an addition to the
    conditioning vector. Attaching happens on a private copy of the module tree (`trainables.model`),
    never on the frozen VLSM other trials share."""

    layers: dict[str, list[EncoderLayer]]
    decoder_taps: tuple[int, ...] = ()
    condition: str | None = None
    condition_width: int = 0
    taps: str | None = None
    text_taps: str | None = None


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
        """Frozen, un-prompted global image embedding (N, image_feature_dim): what a `PromptFn` receives."""
        raise NotImplementedError

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Frozen, un-prompted text embedding (N, D) of tokenized texts: the sentence vector the model
        conditions on (CLIP's projected EOS state). Used for the paper's Fig. 4 (`trainables.embeddings`)."""
        raise NotImplementedError

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompts: Prompts | PromptFn | None = None,
        text_index: torch.Tensor | None = None,
        image_side: tuple[torch.Tensor, ...] | None = None,
    ) -> SegmentationOutput:
        """Segment images (N, 3, S, S) given tokenized texts (T, L): one per image (T = N) or, with
        `text_index` (N,) of row numbers, the distinct texts of the batch. `image_side`: what
        `self.image_side(pixel_values, pooled)` returns for these images (then the image encoder is not run)."""
        raise NotImplementedError

    def image_side(self, pixel_values: torch.Tensor, pooled: bool = False) -> tuple[torch.Tensor, ...]:
        """Everything `forward` reads of the frozen, un-prompted image pass, as tensors with the batch first:
        a function of each image alone, so the frozen-feature cache can keep it per image. `pooled` adds
        what a `PromptFn` reads, where it is not derived from the rest. Contiguous, and `forward`'s own pass
        must hand its consumers the same layout (a cached batch is stacked from per-image rows, and a
        convolution's rounding depends on its input's strides). Optional: without it nothing is cached."""
        raise NotImplementedError

    def attach_points(self) -> AttachPoints:
        """Where weight-space learners attach (see `AttachPoints`). Optional: without it LoRA and adapter
        learners are not available on this VLSM. May restructure the adapter's own modules (e.g. split a
        fused attention into called projections) without changing what `forward` computes."""
        raise NotImplementedError

    def make_upsampler(self) -> nn.Module:
        """A fresh learnable upsampler mapping `SegmentationOutput.tap` to logits (N, 1, S, S)."""
        raise NotImplementedError

    def encoder_modules(self) -> list[nn.Module]:
        """The pretrained text/vision encoders (E2E with `train_encoders: false` freezes exactly these).
        Optional: an adapter without it cannot run that E2E variant."""
        raise NotImplementedError
