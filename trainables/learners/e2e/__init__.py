"""E2E fine-tuning baseline: no learner, no prompts, nothing frozen (reference §3, paper Table 3).

Registered as a learner so that it sits in the same matrix as the prompt learners; with no modalities it is
viable on every VLSM and not swept. `trainables.model.build_model` sees `model=None` (no torch module),
unfreezes the VLSM and builds no upsampler (the original's E2E was the plain HF model).
"""

from __future__ import annotations

from dataclasses import dataclass

from trainables.catalog import register_learner


@dataclass(frozen=True)
class E2EConfig:
    # false: freeze the text and vision encoders and train only the decoder. The original wrapped HF's
    # `forward`, which runs both CLIP encoders under `torch.no_grad()`, so effectively only the decoder
    # learned there (see docs/learners.md).
    train_encoders: bool = True


register_learner("e2e", "E2E finetune", E2EConfig, modalities=set(), model=None, cost=("weight_grad",))
