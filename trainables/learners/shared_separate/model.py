"""Shared Separate (TuneVLSeg): a small shared context per depth, projected separately into each encoder
(paper §4, reference §1.6).

Parameters: `context_vectors` (J, B, d) ~ N(0, 0.02²), d = `shared_dim`; per depth a text projection d→Hl
and a vision projection d→Hv:

    text_k = LN(W_t,k · context_vectors[k]),   vision_k = LN(W_v,k · context_vectors[k])

Paper: "a linear layer followed by layer normalization" (Linear without bias, LayerNorm with). Original
code (reference §9.5, §9.4), reproduced by the flags: `projection_norm: false` (a plain Linear with bias,
no LayerNorm) and `identical_init_across_depths: true` (deep copies of one Linear per side).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from trainables.learners.base import ContextLearner, PromptConfig, check_depth, init_context, register_learner
from trainables.learners.projection import mlp_projection, per_depth
from trainables.vlsm.base import TEXT, VISION, Prompts


@dataclass(frozen=True)
class SharedSeparateConfig(PromptConfig):
    learner_name: ClassVar[str] = "shared_separate"
    text_space_init: ClassVar[bool] = False

    context_init: str | None = None
    shared_dim: int = 64  # d, searched {32, 64}
    projection_norm: bool = True  # false: the original (no LayerNorm)
    identical_init_across_depths: bool = False  # true: the original (deep copies)

    def __post_init__(self):
        super().__post_init__()
        if self.shared_dim < 1:
            self.fail("shared_dim", f"{self.shared_dim} must be >= 1")


class SharedSeparate(ContextLearner):
    modalities = frozenset({TEXT, VISION})

    def __init__(self, config: SharedSeparateConfig, spec, embed_tokens=None):
        super().__init__(config, spec, embed_tokens)
        check_depth(config, spec)
        self.context_vectors = init_context(config, config.shared_dim)  # (J, B, d)
        norm, same = config.projection_norm, config.identical_init_across_depths
        self.text_projections = per_depth(
            lambda: mlp_projection(config.shared_dim, spec.text_width, None, final_norm=norm), config.prompt_depth, same)
        self.vision_projections = per_depth(
            lambda: mlp_projection(config.shared_dim, spec.vision_width, None, final_norm=norm), config.prompt_depth, same)

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        rows = list(self.context_vectors.unbind(0))
        return Prompts(text=[p(c) for p, c in zip(self.text_projections, rows)],
                       vision=[p(c) for p, c in zip(self.vision_projections, rows)])


register_learner("shared_separate", SharedSeparateConfig, SharedSeparate, "Shared Separate")
