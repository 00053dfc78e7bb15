"""CoCoOp: catalog entry and config (torch-free); the torch module is `cocoop/model.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trainables.catalog import TEXT, register_learner
from trainables.learners.config import ProjectionConfig


@dataclass(frozen=True)
class CoCoOpConfig(ProjectionConfig):
    learner_name: ClassVar[str] = "cocoop"


register_learner("cocoop", "CoCoOp", CoCoOpConfig, {TEXT},
                 model="trainables.learners.cocoop.model:CoCoOp", seed=1234)
