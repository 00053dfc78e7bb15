"""CoCoOp (Zhou et al. 2022), deep variant: CoOp context plus an image-conditioned shift (reference §1.2).

Parameters: `context_vectors` (J, B, Hl) as CoOp, and one meta-net per depth mapping the frozen image
embedding (N, D) to a shift (N, Hl) that is added to every one of the B tokens of that depth:

    prompts_k(x) = context_vectors[k] + meta_k(f(x))            (N, B, Hl),   k = 0..J-1

meta_k: Linear(D→r, bias) → ReLU → Linear(r→Hl, no bias) → LayerNorm(Hl, no bias), or with `use_lora`
Linear(D→r, no bias) → Linear(r→Hl, no bias) → LayerNorm(Hl, no bias). f(x) is un-normalised.
"""

from __future__ import annotations

import torch

from trainables.learners.base import ContextLearner, check_depth, init_context
from trainables.learners.cocoop import CoCoOpConfig
from trainables.learners.projection import per_depth, projection
from trainables.vlsm.base import Prompts


class CoCoOp(ContextLearner):
    needs_image_features = True

    def __init__(self, config: CoCoOpConfig, spec, embed_tokens=None):
        super().__init__(config, spec, embed_tokens)
        check_depth(config, spec)
        self.context_vectors = init_context(config, spec.text_width, embed_tokens)  # (J, B, Hl)
        self.meta_nets = per_depth(
            lambda: projection(spec.image_feature_dim, spec.text_width, config.intermediate_dim,
                               use_lora=config.use_lora, final_norm=True, final_bias=False),
            config.prompt_depth)

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        if image_features is None:
            raise ValueError("CoCoOp needs image_features (N, D) from the VLSM adapter")
        feats = image_features.to(self.context_vectors.dtype)
        rows = [ctx[None] + net(feats)[:, None]  # (1, B, Hl) + (N, 1, Hl) -> (N, B, Hl)
                for ctx, net in zip(self.context_vectors, self.meta_nets)]
        return Prompts(text=rows)
