"""Shared Attention (TuneVLSeg): one joint text+vision context per depth, mixed by a transformer layer
(paper §4, reference §1.5).

Parameters: `context_vectors` (J, B, Hl+Hv) ~ N(0, 0.02²) and J `nn.TransformerEncoderLayer`s (d_model
Hl+Hv, `nhead`, `dim_feedforward` F, `dropout`, `norm_first`, ReLU). At depth k:

    z_k = layer_k(context_vectors[k])   (B, Hl+Hv);   text_k = z_k[:, :Hl],  vision_k = z_k[:, Hl:]

Both halves come from one call, so they share the dropout sample. Paper semantics: the B tokens attend to
each other. Original code (reference §9.4), reproduced by the flags: `attend_across_prompts: false` feeds
the layer a length-1 sequence per token (attention never mixes tokens), and `identical_init_across_depths:
true` makes the J layers deep copies of one layer.
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.learners.base import ContextLearner, check_depth, init_context
from trainables.learners.projection import per_depth
from trainables.learners.shared_attention import SharedAttentionConfig
from trainables.vlsm.base import Prompts


class SharedAttention(ContextLearner):
    def __init__(self, config: SharedAttentionConfig, spec, embed_tokens=None):
        super().__init__(config, spec, embed_tokens)
        check_depth(config, spec)
        width = spec.text_width + spec.vision_width
        if width % config.nhead:
            config.fail("nhead", f"{config.nhead} does not divide the joint width {width} "
                                 f"({spec.text_width} text + {spec.vision_width} vision)")
        self.context_vectors = init_context(config, width)  # (J, B, Hl+Hv)
        self.layers = per_depth(
            lambda: nn.TransformerEncoderLayer(width, config.nhead, config.dim_feedforward, config.dropout,
                                               norm_first=config.norm_first, batch_first=True),
            config.prompt_depth, identical_init=config.identical_init_across_depths)

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        hl = self.spec.text_width
        text, vision = [], []
        for ctx, layer in zip(self.context_vectors, self.layers):
            # (1, B, W): one sequence of B tokens; (B, 1, W): B sequences of one token (the original)
            z = layer(ctx[None])[0] if self.config.attend_across_prompts else layer(ctx[:, None])[:, 0]
            text.append(z[:, :hl])
            vision.append(z[:, hl:])
        return Prompts(text=text, vision=vision)
