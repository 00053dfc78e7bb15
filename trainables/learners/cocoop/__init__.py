"""CoCoOp: catalog entry and config (torch-free); the torch module is `cocoop/model.py`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from trainables.catalog import TEXT, register_learner
from trainables.learners.config import INTERMEDIATE_DIM, PROJECTION_SEARCH, USE_LORA, ProjectionConfig


@dataclass(frozen=True)
class CoCoOpConfig(ProjectionConfig):
    learner_name: ClassVar[str] = "cocoop"


register_learner("cocoop", "CoCoOp", CoCoOpConfig, {TEXT},
                 model="trainables.learners.cocoop.model:CoCoOp", seed=1234, search=PROJECTION_SEARCH,
                 # The original's drifted `choice(32, 129, 32)`, kept verbatim: 32 is listed twice, so the random
                 # start-up trials draw it twice as often (reference spec §7/§9.6).
                 reference_search=(dataclasses.replace(INTERMEDIATE_DIM, choices=(32, 129, 32)), USE_LORA),
                 cost=("text_grad", "image_features"),
                 # the original's CLIPSeg wrapper for it created and counted the upsampler, never ran it (reference §9.1)
                 original_upsampler={"clipseg": "unused"})
