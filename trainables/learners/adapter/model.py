"""VLSM-Adapter: bottleneck blocks in the frozen encoders, plus one on the text conditioning vector (facts and
sources in `adapter/__init__.py`). Dense: before the residual additions of the transformer layers. Shallow:
on the decoder's taps and on the tapped text layers' EOS states, added to the conditioning vector.

Block: a(x) = x + ReLU(up(ReLU(down(x)))), default Linear init, as in VLSM-Adapter (so, unlike LoRA, the
model does not start as the frozen VLSM). Per adapted layer of width w: two blocks, 2·(2·w·b + b + w)
parameters; the condition block: 2·P·c + c + P for the conditioning width P and c = condition_bottleneck.

Dense, which layers: the first max(decoder_taps) layers of each targeted encoder (VLSM-Adapter's rule on
CLIPSeg: 9), or all of them where the decoder reads only the last layer (CRIS text: 12). An encoder without
transformer layers (CRIS's ResNet) is not adapted: VLSM-Adapter adapts transformer encoders. Shallow: one
block per decoder tap and side, 2·w·b + b + w each; only where the VLSM offers taps (CLIPSeg).
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
        attach = self._shallow if self.config.variant == "shallow" else self._dense
        blocks, modified = attach(vlsm, points)
        if not blocks:
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

    def _dense(self, vlsm: nn.Module, points) -> tuple[list[nn.Module], set[str]]:
        blocks, modified = [], set()
        for modality in sorted(self.config.target_modalities):
            for layer in adapted_layers(points, modality):
                for name in (layer.attention, layer.mlp):
                    block = Bottleneck(layer.width, self.config.hidden)
                    replace_module(vlsm, name, AdaptedOutput(vlsm.get_submodule(name), block))
                    blocks.append(block)
                    modified.add(modality)
        return blocks, modified

    def _shallow(self, vlsm: nn.Module, points) -> tuple[list[nn.Module], set[str]]:
        """Blocks on the taps the decoder reads; neither encoder's own computation changes (the frozen image
        pass stays cacheable), so `modified` stays empty."""
        if points.taps is None or not points.decoder_taps:
            self.config.fail("variant", f"'shallow' needs decoder taps, which {vlsm.spec.name} does not have; "
                                        "allowed on it: dense")
        blocks = []
        targets = self.config.target_modalities
        if "vision" in targets:
            width = points.layers["vision"][0].width
            taps = vlsm.get_submodule(points.taps)
            taps.extend(Bottleneck(width, self.config.hidden) for _ in points.decoder_taps)
            blocks += list(taps)
        if "text" in targets:
            width = points.layers["text"][0].width
            if width != points.condition_width:
                self.config.fail("variant", f"'shallow' adds text states ({width} wide) to the conditioning vector "
                                            f"({points.condition_width} wide) unprojected, as VLSM-Adapter does; "
                                            f"this {vlsm.spec.name} has different widths; use dense")
            text_taps = vlsm.get_submodule(points.text_taps)
            text_taps.extend(Bottleneck(width, self.config.hidden) for _ in points.decoder_taps)
            blocks += list(text_taps)
        return blocks, set()

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        return Prompts()  # the blocks act inside the encoders
