"""CoOp: catalog entry and config (torch-free); the torch module is `coop/model.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trainables.catalog import TEXT, register_learner
from trainables.learners.config import PromptConfig


@dataclass(frozen=True)
class CoOpConfig(PromptConfig):
    learner_name: ClassVar[str] = "coop"


register_learner("coop", "CoOp", CoOpConfig, {TEXT},
                 model="trainables.learners.coop.model:CoOp", seed=12345,
                 cost=("text_grad",),
                 # the original's CLIPSeg wrapper for it created and counted the upsampler, never ran it (reference §9.1)
                 original_upsampler={"clipseg": "unused"})
