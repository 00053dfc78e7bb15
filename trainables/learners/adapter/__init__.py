"""VLSM-Adapter (Dhakal et al., MICCAI 2024): catalog entry and config (torch-free); the torch module is
`adapter/model.py`.

Beyond the paper: the original authors' group's follow-up to TuneVLSeg, on the same medical sets. Bottleneck
adapters inside the frozen encoders instead of prompts. Facts read from naamiinepal/vlsm-adapter
(`src/models/clipseg_adapter.py`, `configs/model/clipseg_*_adapter.yaml`, `scripts/finetune.py`):

- adapter block: x + ReLU(up(ReLU(down(x)))), down width -> bottleneck and up bottleneck -> width, both
  Linear with bias (2·w·b + b + w parameters); no residual scaling;
- dense: one block after the self-attention and one after the MLP of a layer, each before its residual
  addition, in the first max(extract_layers) = 9 layers of both encoders (so CLIPSeg's tenth vision layer,
  whose output is the deepest decoder tap, has none); bottleneck 64; lr 1e-3, weight decay 1e-3;
- shallow: a block on each decoder tap (the vision stream itself is untouched) and, per tapped layer, a
  block on the text EOS state of the same layer whose output is *added* to the conditioning vector
  (unprojected: needs text width = conditioning width); bottleneck 512; lr 3e-4;
- variants V / VL / VLC: vision encoder only, both encoders, both plus a block (bottleneck 256) on the
  text conditioning vector. Here `targets` (vision / both) and `condition`.

CLIPSeg has both variants; CRIS has no decoder taps, so only dense (see docs/learners.md, "Beyond the paper").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trainables.catalog import TEXT, register_learner
from trainables.hparams import LEARNER_CONFIG, Param
from trainables.learners.config import EncoderConfig

VARIANTS = {"dense": 64, "shallow": 512}  # variant -> VLSM-Adapter's bottleneck for it


@dataclass(frozen=True)
class AdapterConfig(EncoderConfig):
    """variant: where the blocks sit, "dense" or "shallow"; bottleneck: their hidden width (None: VLSM-Adapter's
    for the variant, 64 dense, 512 shallow); condition: one more block on the text conditioning vector (the
    paper's "C"), of width `condition_bottleneck` (256 in VLSM-Adapter)."""

    learner_name: ClassVar[str] = "adapter"

    variant: str = "dense"
    bottleneck: int | None = None
    condition: bool = True
    condition_bottleneck: int = 256

    def __post_init__(self):
        super().__post_init__()
        if self.variant not in VARIANTS:
            self.fail("variant", f"{self.variant!r} is not allowed; allowed: {', '.join(VARIANTS)}")
        for name in ("bottleneck", "condition_bottleneck"):
            value = getattr(self, name)
            if value is None and name == "bottleneck":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                self.fail(name, f"{value!r} must be an integer >= 1")

    @property
    def hidden(self) -> int:
        return VARIANTS[self.variant] if self.bottleneck is None else self.bottleneck


# Modalities {TEXT}: what it needs of a VLSM; the encoders it changes are its `targets`, resolved against the
# VLSM's attach points (a ResNet image encoder has no transformer layers to adapt).
register_learner("adapter", "VLSM-Adapter", AdapterConfig, {TEXT},
                 model="trainables.learners.adapter.model:VLSMAdapterLearner", seed=1234, beyond_paper=True,
                 # On each VLSM: the frozen forward plus the activation gradients back through what it adapts
                 # (the bottleneck blocks' own products are left out on both, as small as LoRA's). CLIPSeg: its
                 # text layers and dense blocks in its ViT from layer 1, so the text and vision gradients. CRIS:
                 # its text blocks only (the ResNet has no transformer layers), so the text gradients, like CoOp.
                 cost={"clipseg": ("text_grad", "vision_grad"), "cris": ("text_grad",)},
                 # beside the paper's lr and weight decay; VLSM-Adapter's dense bottleneck (64) lies inside
                 search=(Param("adapter_bottleneck", "categorical", LEARNER_CONFIG + "bottleneck",
                               choices=(16, 32, 64, 128), label="Adapter bottleneck"),))
