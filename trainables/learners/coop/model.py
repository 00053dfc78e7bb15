"""CoOp (Zhou et al. 2022), deep variant: learnable text context tokens (paper Eqs. 5-6, reference §1.1).

Parameters: `context_vectors` (J, B, Hl); row 0 = token embeddings of "a photo of a" (B = 4), rows 1.. ~ N(0, 0.02²).
Output: text prompts, row k (B, Hl) enters text layer k+1; the vision encoder is untouched.
"""

from __future__ import annotations

import torch

from trainables.learners.base import ContextLearner, check_depth, init_context
from trainables.learners.coop import CoOpConfig
from trainables.vlsm.base import Prompts


class CoOp(ContextLearner):
    def __init__(self, config: CoOpConfig, spec, embed_tokens=None):
        super().__init__(config, spec, embed_tokens)
        check_depth(config, spec)
        self.context_vectors = init_context(config, spec.text_width, embed_tokens)  # (J, B, Hl)

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        return Prompts(text=list(self.context_vectors.unbind(0)))
