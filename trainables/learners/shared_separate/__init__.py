"""Shared Separate: catalog entry and config (torch-free); the torch module is `shared_separate/model.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trainables.catalog import TEXT, VISION, register_learner
from trainables.hparams import LEARNER_CONFIG, Param
from trainables.learners.config import PromptConfig


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


register_learner("shared_separate", "Shared Separate", SharedSeparateConfig, {TEXT, VISION},
                 model="trainables.learners.shared_separate.model:SharedSeparate", seed=4322,
                 search=(Param("shared_dim", "categorical", LEARNER_CONFIG + "shared_dim", choices=(32, 64),
                               label="Shared Space Dimension"),),
                 cost=("text_grad", "vision_grad"))
