"""Config dataclasses the prompt learners share (torch-free: the driver checks learner settings with them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trainables.hparams import LEARNER_CONFIG, Param

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


@dataclass(frozen=True)
class ProjectionConfig(PromptConfig):
    """Config of the learners with per-depth projections searched over r and LoRA (CoCoOp, MaPLe)."""

    intermediate_dim: int = 64  # r
    use_lora: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.intermediate_dim < 1:
            self.fail("intermediate_dim", f"{self.intermediate_dim} must be >= 1")


# ProjectionConfig's searched fields (paper Table 2); CoCoOp and MaPLe both declare them.
INTERMEDIATE_DIM = Param("intermediate_dim", "categorical", LEARNER_CONFIG + "intermediate_dim",
                         choices=(32, 64, 96, 128), label="Intermediate dimension")
USE_LORA = Param("use_lora", "categorical", LEARNER_CONFIG + "use_lora", choices=(True, False), label="Use LORA")
PROJECTION_SEARCH = (INTERMEDIATE_DIM, USE_LORA)


ENCODER_TARGETS = {"text": frozenset({"text"}), "vision": frozenset({"vision"}), "both": frozenset({"text", "vision"})}


@dataclass(frozen=True)
class EncoderConfig:
    """Fields of the learners that change the frozen encoders instead of prompting them (LoRA, adapters).

    targets: the encoders to change, "text", "vision" or "both"; a VLSM without a targeted encoder's attach
        points is left alone on that side (see each learner's docs), and at least one must remain.
    """

    learner_name: ClassVar[str] = "?"

    targets: str = "both"

    def __post_init__(self):
        if self.targets not in ENCODER_TARGETS:
            self.fail("targets", f"{self.targets!r} is not allowed; allowed: {', '.join(ENCODER_TARGETS)}")

    @property
    def target_modalities(self) -> frozenset[str]:
        return ENCODER_TARGETS[self.targets]

    def fail(self, field_name: str, message: str):
        from trainables.config import ConfigError

        raise ConfigError(f"learner {self.learner_name!r} {field_name}: {message}")
