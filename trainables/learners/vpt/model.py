"""VPT-deep (Jia et al. 2022): learnable vision prompt tokens (paper Eqs. 7-8, reference §1.3).

Parameters: `context_vectors` (J, B, Hv), all ~ N(0, 0.02²). Row k (B, Hv) is appended after the patch
tokens at the input of vision layer k+1; the text encoder is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from trainables.learners.base import ContextLearner, PromptConfig, check_depth, init_context, register_learner
from trainables.vlsm.base import VISION, Prompts


@dataclass(frozen=True)
class VPTConfig(PromptConfig):
    learner_name: ClassVar[str] = "vpt"
    text_space_init: ClassVar[bool] = False

    context_init: str | None = None


class VPT(ContextLearner):
    modalities = frozenset({VISION})

    def __init__(self, config: VPTConfig, spec, embed_tokens=None):
        super().__init__(config, spec, embed_tokens)
        check_depth(config, spec)
        self.context_vectors = init_context(config, spec.vision_width)  # (J, B, Hv)

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        return Prompts(vision=list(self.context_vectors.unbind(0)))


register_learner("vpt", VPTConfig, VPT, "VPT")
