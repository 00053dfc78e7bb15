"""VPT-deep (Jia et al. 2022): learnable vision prompt tokens (paper Eqs. 7-8, reference §1.3).

Parameters: `context_vectors` (J, B, Hv), all ~ N(0, 0.02²). Row k (B, Hv) is appended after the patch
tokens at the input of vision layer k+1; the text encoder is untouched.
"""

from __future__ import annotations

import torch

from trainables.learners.base import ContextLearner, check_depth, init_context
from trainables.learners.vpt import VPTConfig
from trainables.vlsm.base import Prompts


class VPT(ContextLearner):
    def __init__(self, config: VPTConfig, spec, embed_tokens=None):
        super().__init__(config, spec, embed_tokens)
        check_depth(config, spec)
        self.context_vectors = init_context(config, spec.vision_width)  # (J, B, Hv)

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        return Prompts(vision=list(self.context_vectors.unbind(0)))
