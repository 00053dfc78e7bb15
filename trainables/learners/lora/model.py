"""LoRA on the frozen encoders' attention projections, with Hugging Face `peft` (`inject_adapter_in_model`).

Each targeted `nn.Linear` W (d_in -> d_out) becomes W x + (alpha / r) B A dropout(x), A (r, d_in) Kaiming-
uniform, B (d_out, r) zeros, so the model starts exactly as the frozen VLSM. Trainable parameters:
r · Σ (d_in + d_out) over the targeted projections, linear in r.

Targets come from the VLSM's attach points: on CLIPSeg the q/k/v/out projections of HF's text layers and of
the vision layers its forward runs (10 of 12: the decoder's taps end there); on CRIS those of the 12 text
blocks (split out of the fused `nn.MultiheadAttention`, see `SplitSelfAttention`) and of the ResNet's
attention pool, its only attention (c_proj is its output projection "o").
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.learners.attach import attach_points
from trainables.learners.base import ContextLearner
from trainables.learners.lora import LoRAConfig
from trainables.vlsm.base import Prompts


def target_modules(config: LoRAConfig, points) -> dict[str, list[str]]:
    """{modality: names of the projections that get LoRA} for the targeted encoders the VLSM has."""
    return {m: [layer.projections[p] for layer in points.layers[m] for p in config.projections
                if p in layer.projections]
            for m in sorted(config.target_modalities & points.layers.keys())}


class LoRA(ContextLearner):
    attaches = True

    def __init__(self, config: LoRAConfig, spec, embed_tokens=None):
        super().__init__(config, spec, embed_tokens)

    def attach(self, vlsm: nn.Module) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        targets = target_modules(self.config, attach_points(self, vlsm))
        names = [n for group in targets.values() for n in group]
        if not names:
            self.config.fail("targets", f"{self.config.targets!r} with projections {self.config.projections!r} "
                                        f"matches no attention projection of {vlsm.spec.name}")
        lora = LoraConfig(r=self.config.rank, lora_alpha=self.config.alpha, lora_dropout=self.config.dropout,
                          target_modules=names, bias="none")
        inject_adapter_in_model(lora, vlsm)
        self.attached = [vlsm.get_submodule(n) for n in names]
        self.modified = frozenset(m for m, group in targets.items() if group)

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        return Prompts()  # the LoRA layers act inside the encoders
