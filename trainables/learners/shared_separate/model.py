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

import torch

from trainables.learners.base import ContextLearner, check_depth, init_context
from trainables.learners.projection import mlp_projection, per_depth
from trainables.learners.shared_separate import SharedSeparateConfig
from trainables.vlsm.base import Prompts


class SharedSeparate(ContextLearner):
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
