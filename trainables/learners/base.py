"""Context learners: small modules that produce prompt tensors, one folder per learner (see `trainables.catalog`).

A learner owns its trainable tensors and nothing of the VLSM. Each forward returns a `Prompts` object
(per-depth text and/or vision prompts); the VLSM adapter decides where they enter. A learner declares
the encoders it prompts (`modalities`, in its catalog entry); a (VLSM, learner) pair is viable iff
`learner.modalities <= vlsm.modalities` — there is no hand-written list of pairs.

A learner that changes the frozen encoders instead of prompting them (LoRA, adapters) sets `attaches = True`
and implements `attach(vlsm)`: `trainables.model` calls it once, on a private copy of the VLSM's module tree,
right after constructing the learner; its `forward` then returns empty `Prompts`. The VLSM adapter says
where such learners may attach (`VLSMAdapter.attach_points`), so it needs no branch per learner.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
from torch import nn

from trainables.learners.config import PromptConfig
from trainables.vlsm.base import Prompts, VLSMSpec


class ContextLearner(nn.Module):
    """Base class. Subclasses set the class attributes and implement `forward`."""

    # True: forward(image_features) needs the frozen image features; the model then hands the learner itself
    # to the adapter as a `PromptFn`, which calls it with the features of its own image pass.
    needs_image_features: ClassVar[bool] = False
    # True: the learner modifies the VLSM's modules (`attach`) rather than producing prompts.
    attaches: ClassVar[bool] = False

    def __init__(self, config, spec: VLSMSpec, embed_tokens: Callable[[str], torch.Tensor] | None = None):
        super().__init__()
        self.config = config
        self.spec = spec
        # Set by `attach`: the encoders ("text", "vision") whose computation it changed, and the modules it
        # placed inside the VLSM (kept in the learner's train/eval mode although the frozen VLSM stays in eval).
        self.modified: frozenset[str] = frozenset()
        self.attached: list[nn.Module] = []

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        raise NotImplementedError

    def attach(self, vlsm: nn.Module) -> None:
        """Insert the learner's trainable modules into `vlsm` (a private copy), leaving the rest frozen. Only
        for `attaches = True`; the modules stay reachable through `self.attached` (plain list, not registered
        twice)."""
        raise NotImplementedError

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.attached:
            module.train(mode)
        return self


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
