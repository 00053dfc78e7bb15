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
    # True: forward(image_features) needs the frozen image features; the model then hands the learner itself
    # to the adapter as a `PromptFn`, which calls it with the features of its own image pass.
    needs_image_features: ClassVar[bool] = False

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


# ---- shared pieces of the prompt learners (added for the learner modules; composition, not inheritance) ----

DEPTH_RANGE = (1, 11)  # paper J: prompts enter layers 1..J; the search space is [1, 11]
PHOTO_INIT = "a photo of a"


@dataclass(frozen=True)
class PromptConfig:
    """Fields every prompt learner shares (contract names). Subclasses add their own fields.

    prompt_depth: J, the number of layers receiving fresh prompts (1..11, and at most the VLSM's
        `max_prompt_depth`). num_context: B, prompt tokens per layer. context_init: "a photo of a" (row 0
        from the frozen token embeddings, B must equal its 4 tokens) or None (all rows N(0, vector_std²)).
    """

    learner_name: ClassVar[str] = "?"
    text_space_init: ClassVar[bool] = True  # False: the context does not live in token-embedding space

    prompt_depth: int = 1
    num_context: int = 4
    context_init: str | None = PHOTO_INIT
    vector_std: float = 0.02

    def __post_init__(self):
        lo, hi = DEPTH_RANGE
        if not lo <= self.prompt_depth <= hi:
            self.fail("prompt_depth", f"{self.prompt_depth} is outside [{lo}, {hi}]")
        if self.num_context < 1:
            self.fail("num_context", f"{self.num_context} must be >= 1")
        if not self.vector_std > 0:
            self.fail("vector_std", f"{self.vector_std} must be > 0")
        if self.context_init is not None and not self.text_space_init:
            self.fail("context_init", f"{self.context_init!r} is not possible: this learner's context is not in "
                                      "the token-embedding space; allowed: null (Gaussian init)")
        if self.context_init is not None and not self.context_init.strip():
            self.fail("context_init", "must be a non-empty string or null")

    def fail(self, field_name: str, message: str):
        from trainables.config import ConfigError

        raise ConfigError(f"learner {self.learner_name!r} {field_name}: {message}")


def check_depth(config: PromptConfig, spec: VLSMSpec) -> None:
    """J must fit the VLSM: every row needs a layer to enter."""
    if config.prompt_depth > spec.max_prompt_depth:
        config.fail("prompt_depth", f"{config.prompt_depth} exceeds the {spec.max_prompt_depth} layers of this "
                                    f"{spec.name} that can take prompts; allowed: 1..{spec.max_prompt_depth}")


def init_context(config: PromptConfig, width: int,
                 embed_tokens: Callable[[str], torch.Tensor] | None = None) -> nn.Parameter:
    """`context_vectors` (J, B, width): rows ~ N(0, std²); row 0 = token embeddings of `context_init`."""
    depth, num = config.prompt_depth, config.num_context
    ctx = torch.empty(depth, num, width).normal_(0.0, config.vector_std)
    if config.context_init is not None:
        if embed_tokens is None:
            config.fail("context_init", "needs the VLSM's token embeddings (embed_tokens); set it to null")
        init = embed_tokens(config.context_init).detach().to(ctx.dtype).cpu()  # (T, width)
        if init.shape != (num, width):
            config.fail("num_context", f"{num} but context_init {config.context_init!r} gives {init.shape[0]} "
                                       f"tokens of width {init.shape[-1]}; set num_context={init.shape[0]} or "
                                       "context_init=null")
        ctx[0] = init
    return nn.Parameter(ctx)
