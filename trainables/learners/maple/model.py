"""MaPLe (Khattak et al. 2023): text context coupled to vision prompts by per-depth projections (reference §1.4).

Parameters: `context_vectors` (J, B, Hl) ("a photo of a" row 0, as CoOp) and J projections Hl → Hv:

    text_k = context_vectors[k]             (B, Hl)
    vision_k = proj_k(context_vectors[k])   (B, Hv)

proj_k: Linear(Hl→r, bias) → ReLU → Linear(r→Hv, no bias) → LayerNorm(Hv), or with `use_lora`
Linear(Hl→r, no bias) → Linear(r→Hv, no bias) → LayerNorm(Hv). (Original MaPLe used one Linear per layer;
TuneVLSeg's bottleneck + LayerNorm is what its numbers come from.)
"""

from __future__ import annotations

import torch

from trainables.learners.base import ContextLearner, check_depth, init_context
from trainables.learners.maple import MapleConfig
from trainables.learners.projection import per_depth, projection
from trainables.vlsm.base import Prompts


class Maple(ContextLearner):
    def __init__(self, config: MapleConfig, spec, embed_tokens=None):
        super().__init__(config, spec, embed_tokens)
        check_depth(config, spec)
        self.context_vectors = init_context(config, spec.text_width, embed_tokens)  # (J, B, Hl)
        self.projections = per_depth(
            lambda: projection(spec.text_width, spec.vision_width, config.intermediate_dim,
                               use_lora=config.use_lora, final_norm=True, final_bias=True),
            config.prompt_depth)

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        text = list(self.context_vectors.unbind(0))
        return Prompts(text=text, vision=[proj(ctx) for proj, ctx in zip(self.projections, text)])
