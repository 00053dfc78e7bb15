"""Maple: catalog entry and config (torch-free); the torch module is `maple/model.py`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from trainables.catalog import TEXT, VISION, register_learner
from trainables.learners.config import INTERMEDIATE_DIM, PROJECTION_SEARCH, USE_LORA, ProjectionConfig


@dataclass(frozen=True)
class MapleConfig(ProjectionConfig):
    learner_name: ClassVar[str] = "maple"


register_learner("maple", "Maple", MapleConfig, {TEXT, VISION},
                 model="trainables.learners.maple.model:Maple", seed=12345, search=PROJECTION_SEARCH,
                 # The original searched `range(32, 97, 32)` = {32, 64, 96} (reference spec §7/§9.6).
                 reference_search=(dataclasses.replace(INTERMEDIATE_DIM, choices=(32, 64, 96)), USE_LORA),
                 cost=("text_grad", "vision_grad"))
