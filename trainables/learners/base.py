"""Context learners: small modules that produce prompt tensors, one file per learner behind a registry.

A learner owns its trainable tensors and nothing of the VLSM. Each forward returns a `Prompts` object
(per-depth text and/or vision prompts); the VLSM adapter decides where they enter. A learner declares
the encoders it prompts (`modalities`); a (VLSM, learner) pair is viable iff
`learner.modalities <= vlsm.spec.modalities` — there is no hand-written list of pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import nn

from trainables.registry import Registry
from trainables.vlsm.base import Prompts, VLSMSpec


class ContextLearner(nn.Module):
    """Base class. Subclasses set the class attributes and implement `forward`."""

    modalities: ClassVar[frozenset[str]] = frozenset()
    needs_image_features: ClassVar[bool] = False  # True: forward() needs adapter.image_features(x)

    def __init__(self, config, spec: VLSMSpec, embed_tokens: Callable[[str], torch.Tensor] | None = None):
        super().__init__()
        self.config = config
        self.spec = spec

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        raise NotImplementedError


@dataclass(frozen=True)
class LearnerEntry:
    name: str
    config_cls: type
    module_cls: type[ContextLearner] | None  # None for the E2E baseline (no learner, nothing frozen)
    modalities: frozenset[str]
    display_name: str  # as printed in the paper's tables


LEARNERS: Registry[LearnerEntry] = Registry("learner")


def register_learner(name: str, config_cls: type, module_cls: type[ContextLearner] | None,
                     display_name: str, modalities: frozenset[str] | None = None) -> LearnerEntry:
    mods = modalities if modalities is not None else module_cls.modalities  # type: ignore[union-attr]
    return LEARNERS.register(name, LearnerEntry(name, config_cls, module_cls, frozenset(mods), display_name))


def is_viable(learner: str, vlsm_modalities: frozenset[str]) -> bool:
    """A learner fits a VLSM when every encoder it prompts exists on that VLSM."""
    return LEARNERS.get(learner).modalities <= vlsm_modalities
