"""VLSM-Adapter, dense variant: bottleneck blocks before the residual additions of the frozen encoders'
transformer layers, plus one on the text conditioning vector (facts and sources in `adapter/__init__.py`).

Block: a(x) = x + ReLU(up(ReLU(down(x)))), default Linear init, as in VLSM-Adapter (so, unlike LoRA, the
model does not start as the frozen VLSM). Per adapted layer of width w: two blocks, 2·(2·w·b + b + w)
parameters; the condition block: 2·P·c + c + P for the conditioning width P and c = condition_bottleneck.

Which layers: the first max(decoder_taps) layers of each targeted encoder (VLSM-Adapter's rule on CLIPSeg:
9), or all of them where the decoder reads only the last layer (CRIS text: 12). An encoder without
transformer layers (CRIS's ResNet) is not adapted: VLSM-Adapter adapts transformer encoders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.learners.adapter import AdapterConfig
from trainables.learners.attach import AdaptedOutput, attach_points, replace_module
from trainables.learners.base import ContextLearner
from trainables.vlsm.base import Prompts


class Bottleneck(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.down = nn.Linear(width, hidden)
        self.up = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.up(F.relu(self.down(x))))


def adapted_layers(points, modality: str) -> list:
    """The transformer layers of one encoder that get dense blocks (VLSM-Adapter: the first max(taps))."""
    layers = [layer for layer in points.layers.get(modality, []) if layer.attention and layer.mlp]
    return layers[:max(points.decoder_taps)] if points.decoder_taps else layers


class VLSMAdapterLearner(ContextLearner):
    attaches = True

    def __init__(self, config: AdapterConfig, spec, embed_tokens=None):
        super().__init__(config, spec, embed_tokens)

    def attach(self, vlsm: nn.Module) -> None:
        points = attach_points(self, vlsm)
        blocks: list[nn.Module] = []
        modified = set()
        for modality in sorted(self.config.target_modalities):
            for layer in adapted_layers(points, modality):
                for name in (layer.attention, layer.mlp):
                    block = Bottleneck(layer.width, self.config.bottleneck)
                    replace_module(vlsm, name, AdaptedOutput(vlsm.get_submodule(name), block))
                    blocks.append(block)
                    modified.add(modality)
        if not modified:
            self.config.fail("targets", f"{self.config.targets!r}: {vlsm.spec.name} has no transformer layers "
                                        "there to adapt; allowed on it: text")
        if self.config.condition:
            if points.condition is None:
                self.config.fail("condition", f"{vlsm.spec.name} exposes no conditioning vector; set false")
            block = Bottleneck(points.condition_width, self.config.condition_bottleneck)
            replace_module(vlsm, points.condition, block)  # the attach point is an identity
            blocks.append(block)
        for block in blocks:
            block.requires_grad_(True)
        self.attached = blocks
        self.modified = frozenset(modified)

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        return Prompts()  # the blocks act inside the encoders
