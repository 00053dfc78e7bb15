"""Maple: catalog entry and config (torch-free); the torch module is `maple/model.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trainables.catalog import TEXT, VISION, register_learner
from trainables.learners.config import ProjectionConfig


@dataclass(frozen=True)
class MapleConfig(ProjectionConfig):
    learner_name: ClassVar[str] = "maple"


register_learner("maple", "Maple", MapleConfig, {TEXT, VISION},
                 model="trainables.learners.maple.model:Maple", seed=12345)
