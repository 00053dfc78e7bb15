"""VPT: catalog entry and config (torch-free); the torch module is `vpt/model.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trainables.catalog import VISION, register_learner
from trainables.learners.config import PromptConfig


@dataclass(frozen=True)
class VPTConfig(PromptConfig):
    learner_name: ClassVar[str] = "vpt"
    text_space_init: ClassVar[bool] = False

    context_init: str | None = None


register_learner("vpt", "VPT", VPTConfig, {VISION},
                 model="trainables.learners.vpt.model:VPT", seed=1234,
                 cost=("vision_grad",),
                 # the original's CLIPSeg wrapper for it summed head and upsampler, no residual factor (reference §9.2)
                 original_upsampler={"clipseg": "sum"})
