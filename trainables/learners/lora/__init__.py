"""LoRA (Hu et al. 2022) on the frozen encoders, placed as CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024) does:
catalog entry and config (torch-free); the torch module is `lora/model.py` (Hugging Face `peft`).

Beyond the paper: TuneVLSeg compares prompt learners; this learner answers "prompts or LoRA?" on the same
benchmark. It produces no prompts; it attaches LoRA layers to the VLSM's attention projections
(`VLSMAdapter.attach_points`). Defaults are CLIP-LoRA's (`run_utils.py` of MaxZanella/CLIP-LoRA): rank 2,
alpha 1, dropout 0.25 before the LoRA branch, q/k/v projections of every layer of both encoders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trainables.catalog import TEXT, register_learner
from trainables.hparams import LEARNER_CONFIG, Param
from trainables.learners.config import EncoderConfig

PROJECTIONS = "qkvo"  # query, key, value, output projection of an attention layer


@dataclass(frozen=True)
class LoRAConfig(EncoderConfig):
    """rank r, alpha (the update is scaled by alpha / r, as in peft and CLIP-LoRA), dropout on the LoRA
    branch's input, `projections`: which of q, k, v, o of every targeted attention layer get LoRA."""

    learner_name: ClassVar[str] = "lora"

    rank: int = 2
    alpha: float = 1.0
    dropout: float = 0.25
    projections: str = "qkv"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            self.fail("rank", f"{self.rank!r} must be an integer >= 1")
        if not self.alpha > 0:
            self.fail("alpha", f"{self.alpha!r} must be > 0")
        if not 0 <= self.dropout < 1:
            self.fail("dropout", f"{self.dropout!r} must be in [0, 1)")
        if not self.projections or set(self.projections) - set(PROJECTIONS) or len(set(self.projections)) != len(self.projections):
            self.fail("projections", f"{self.projections!r}: letters from {PROJECTIONS!r}, each at most once "
                                     "(q query, k key, v value, o output)")


# Modalities {TEXT}: what it needs of a VLSM (every VLSM has a text encoder). Which encoders it changes is
# its `targets` field, resolved against the VLSM's attach points when the model is built.
# Searched beside the paper's lr and weight decay (Table 2 marks these rows as beyond the paper). CLIP-LoRA's
# own setting (rank 2, alpha 1, dropout 0.25) lies inside.
SEARCH = (
    Param("lora_rank", "categorical", LEARNER_CONFIG + "rank", choices=(2, 4, 8, 16), label="LoRA rank"),
    Param("lora_alpha", "categorical", LEARNER_CONFIG + "alpha", choices=(1, 2, 4, 8, 16), label="LoRA alpha"),
    Param("lora_dropout", "float", LEARNER_CONFIG + "dropout", low=0.0, high=0.5, label="LoRA dropout"),
)

register_learner("lora", "LoRA", LoRAConfig, {TEXT}, model="trainables.learners.lora.model:LoRA", seed=1234,
                 search=SEARCH, beyond_paper=True,
                 # On each VLSM: the frozen forward plus the activation gradients back through what its LoRA
                 # changes (LoRA's own low-rank products, < 0.1 GFLOP at rank 16, are left out on both).
                 # CLIPSeg: its text layers and its ViT from layer 1, so the text and vision gradients, like
                 # MaPLe. CRIS: its text blocks (the text gradients, through neck and decoder, like CoOp) and the
                 # ResNet's attention pool, the last vision stage: its gradients are about its forward, at 416 px
                 # 13 x 13 tokens of width 2048: q/k/v 3 x 2 x 169 x 2048^2 = 4.25, scores and mixing
                 # 2 x 2 x 169^2 x 2048 = 0.23, c_proj 2 x 169 x 2048 x 1024 = 0.71, so ~5 GFLOP.
                 cost={"clipseg": ("text_grad", "vision_grad"), "cris": ("text_grad", 5.0)})
