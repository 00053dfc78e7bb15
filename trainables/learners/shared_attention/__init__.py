"""Shared Attention: catalog entry and config (torch-free); the torch module is `shared_attention/model.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trainables.catalog import TEXT, VISION, register_learner
from trainables.hparams import LEARNER_CONFIG, Param
from trainables.learners.config import PromptConfig


@dataclass(frozen=True)
class SharedAttentionConfig(PromptConfig):
    learner_name: ClassVar[str] = "shared_attention"
    text_space_init: ClassVar[bool] = False

    context_init: str | None = None
    nhead: int = 16
    dim_feedforward: int = 1280  # searched {1280, 1420}; the original's config default was 1536
    dropout: float = 0.25
    norm_first: bool = True
    attend_across_prompts: bool = True  # false: the original (sequence length 1 per token)
    identical_init_across_depths: bool = False  # true: the original (deep copies of one layer)

    def __post_init__(self):
        super().__post_init__()
        if self.nhead < 1:
            self.fail("nhead", f"{self.nhead} must be >= 1")
        if self.dim_feedforward < 1:
            self.fail("dim_feedforward", f"{self.dim_feedforward} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            self.fail("dropout", f"{self.dropout} must be in [0, 1)")


register_learner("shared_attention", "Shared Attention", SharedAttentionConfig, {TEXT, VISION},
                 model="trainables.learners.shared_attention.model:SharedAttention", seed=123456, search=(
                     Param("nhead", "categorical", LEARNER_CONFIG + "nhead", choices=(16, 20, 32),
                           label="Transformer: Number of Heads"),
                     Param("dropout", "float", LEARNER_CONFIG + "dropout", low=0.1, high=0.55,
                           label="Transformer: Dropout Probability"),
                     Param("dim_feedforward", "categorical", LEARNER_CONFIG + "dim_feedforward",
                           choices=(1280, 1420), label="Transformer: Feed-Forward Dim"),
                     Param("norm_first", "categorical", LEARNER_CONFIG + "norm_first", choices=(True, False),
                           label="Transformer: LayerNorm First"),
                 ),
                 cost=("text_grad", "vision_grad"))
