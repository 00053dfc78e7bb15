"""The CRIS adapter: text prompts into CRIS's CLIP text transformer (catalog entry "cris" in `cris/__init__.py`).

CRIS's image encoder is a ResNet, so the spec declares `modalities = {"text"}`; learners that prompt the vision
encoder are then not viable on CRIS by the generic rule in `trainables.catalog.is_viable`.

Prompt injection (reference §1.0 "Text injection, CRIS"):
- the sequence becomes [SOS, p_1..p_B, text tokens..., last token], capped at 77 tokens; CLIP's learned
  positions are added to all of it (prompts get positions 1..B);
- the key-padding mask gets B "not pad" entries after SOS; the causal mask is rebuilt for the new length;
- the EOS index (argmax of the ids) is shifted by B;
- after a block finishes, the B prompt slots are overwritten with the next depth's prompts. By default
  layers 1..J get rows 0..J-1 (the paper's depth J, same as CLIPSeg). `compat_extra_first_row=True`
  reproduces the original code's 0-indexed loop (reference §9.3): row 0 enters blocks 1 *and* 2, row k
  block k+2, so J+1 blocks get fresh prompts.
The token features including the prompt slots are CRIS's "word" input of the decoder, with the extended mask.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from trainables.catalog import TEXT, VISION, VLSMS
from trainables.config import ConfigError
from trainables.vlsm.base import (
    AttachPoints,
    EncoderLayer,
    PromptFn,
    Prompts,
    SegmentationOutput,
    VLSMAdapter,
    VLSMSpec,
    expand_text,
)
from trainables.vlsm.cris.convert import converted_config, load_cris_weights
from trainables.vlsm.cris.model import CRIS, CRISConfig, CRISUpsampler, SplitSelfAttention, causal_mask, load_cris_config

CLIP_MEAN, CLIP_STD = VLSMS.get("cris").mean, VLSMS.get("cris").std  # written once, on the card
OPTIONS = ("compat_extra_first_row", "init_seed", "dropout")
DEFAULT_CONFIG = "cris-rn50"


class CRISAdapter(VLSMAdapter):
    def __init__(self, model: CRIS, *, compat_extra_first_row: bool = False):
        super().__init__()
        cfg = model.config
        self.model = model
        self.compat_extra_first_row = bool(compat_extra_first_row)
        self.spec = VLSMSpec(
            name="cris",
            modalities=frozenset({TEXT}),
            text_width=cfg.transformer_width,
            vision_width=None,
            max_prompt_depth=cfg.transformer_layers,
            image_size=cfg.img_size,
            image_feature_dim=cfg.embed_dim,
            mean=CLIP_MEAN,
            std=CLIP_STD,
        )
        # The sentence state passes through this before the neck and projector read it: an attach point
        # (`attach_points().condition`) for learners that adapt it; the identity otherwise.
        self.condition = nn.Identity()

    @property
    def config(self) -> CRISConfig:
        return self.model.config

    # -- train/eval: a frozen CRIS must never leave eval mode (BatchNorm statistics would drift) ----------

    def train(self, mode: bool = True) -> "CRISAdapter":
        super().train(mode)
        if mode and not self._has_trainable():
            self.model.eval()
        return self

    def _has_trainable(self) -> bool:
        return any(p.requires_grad for p in self.model.parameters())

    # -- text ---------------------------------------------------------------------------------------------

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        from trainables.tokenizer import clip_tokenizer

        if isinstance(texts, str):
            texts = [texts]
        enc = clip_tokenizer(self.config.context_length)(
            list(texts), padding=True, truncation=True, max_length=self.config.context_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    @torch.no_grad()
    def embed_tokens(self, text: str) -> torch.Tensor:
        from trainables.tokenizer import clip_tokenizer

        ids = clip_tokenizer(self.config.context_length)(text, add_special_tokens=False)["input_ids"]
        emb = self.model.backbone.token_embedding
        return emb(torch.tensor(ids, dtype=torch.long, device=emb.weight.device)).detach().clone()

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    rows: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompted CLIP text encoder. Returns word features (N, L+B, D), the EOS state (N, embed_dim) and the
        extended padding mask (N, L+B), True = pad."""
        bb = self.model.backbone
        rows = list(rows or [])
        n, length = input_ids.shape
        max_len = bb.positional_embedding.shape[0]
        if length > max_len:
            raise ValueError(f"CRIS text has {length} tokens; the CLIP text encoder takes at most {max_len}")
        if len(rows) > len(bb.transformer.resblocks):
            raise ValueError(f"prompt depth {len(rows)} exceeds the {len(bb.transformer.resblocks)} CRIS text layers")
        x = bb.token_embedding(input_ids)
        pad = ~attention_mask.to(torch.bool)
        num_ctx = rows[0].shape[-2] if rows else 0
        if num_ctx:
            if num_ctx > max_len - 2:
                raise ValueError(f"{num_ctx} prompt tokens leave no room for SOS/EOS in {max_len} positions")
            # keep SOS and the last token; drop text from the end when L + B would exceed the 77 positions
            end = min(max_len - num_ctx, length) - 1
            ctx = self._per_sample(rows[0], n, x)
            x = torch.cat([x[:, :1], ctx, x[:, 1:end], x[:, -1:]], dim=1)
            pad = torch.cat([pad[:, :1], pad.new_zeros(n, num_ctx), pad[:, 1:end], pad[:, -1:]], dim=1)
        seq = x.shape[1]
        x = (x + bb.positional_embedding[:seq]).permute(1, 0, 2)  # (L', N, D)
        causal = causal_mask(seq, x.device)
        for idx, block in enumerate(bb.transformer.resblocks):
            x = block(x, attn_mask=causal, key_padding_mask=pad)
            nxt = idx if self.compat_extra_first_row else idx + 1  # row entering block idx+1 (0-based)
            if num_ctx and nxt < len(rows):
                ctx = self._per_sample(rows[nxt], n, x).transpose(0, 1)  # (B, N, D)
                x = torch.cat([x[:1], ctx, x[1 + num_ctx:]], dim=0)
        x = bb.ln_final(x.permute(1, 0, 2))
        eos = (input_ids.argmax(dim=-1) + num_ctx).clamp(max=seq - 1)
        state = x[torch.arange(n, device=x.device), eos] @ bb.text_projection
        return x, state, pad

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The projected EOS state (N, embed_dim): CRIS's sentence feature."""
        self._sync_mode()
        with torch.no_grad():
            return self.encode_text(input_ids, attention_mask)[1]

    def _per_sample(self, row: torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
        """(B, D) or (N, B, D) prompts -> (N, B, D) in the dtype of the residual stream."""
        width = self.spec.text_width
        if row.shape[-1] != width:
            raise ValueError(f"text prompts have width {row.shape[-1]}; CRIS's text transformer is {width} wide")
        if row.dim() == 2:
            row = row.unsqueeze(0).expand(n, -1, -1)
        elif row.dim() != 3 or row.shape[0] != n:
            raise ValueError(f"text prompts of shape {tuple(row.shape)} do not fit a batch of {n}")
        return row.to(device=like.device, dtype=like.dtype)

    # -- image --------------------------------------------------------------------------------------------

    @staticmethod
    def _pool(vis) -> torch.Tensor:
        return vis[-1].mean(dim=(2, 3))

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Spatial mean of C5 (N, embed_dim): CoCoOp's meta-net input on CRIS."""
        self._sync_mode()
        with torch.no_grad():
            return self._pool(self.model.backbone.encode_image(pixel_values))

    def image_side(self, pixel_values: torch.Tensor, pooled: bool = False) -> tuple[torch.Tensor, ...]:
        """C3, C4, C5 of the ResNet: all the decoder and a PromptFn (the mean of C5) read of the image.
        Not under no_grad: the attention pool's kernels round differently with grad mode off, and `forward`
        runs it with grad mode as the caller left it (the frozen weights record no graph either way)."""
        self._sync_mode()
        return tuple(t.detach() for t in self._image_pass(pixel_values))

    def _image_pass(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Contiguous: the attention pool leaves C5 with the batch inside (strides from its (HW, N, C) layout),
        # and the neck's convolutions pick their kernel, hence their rounding, by the input's strides; a
        # cached batch is stacked from per-image rows, so both paths must hand the neck the same layout.
        return tuple(t.contiguous() for t in self.model.backbone.encode_image(pixel_values))

    # -- forward ------------------------------------------------------------------------------------------

    def _sync_mode(self) -> None:
        # Guards against a .train() issued before the parameters were frozen.
        if self.model.training and not self._has_trainable():
            self.model.eval()

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                prompts: Prompts | PromptFn | None = None, text_index: torch.Tensor | None = None,
                image_side: tuple[torch.Tensor, ...] | None = None) -> SegmentationOutput:
        self._sync_mode()
        vis = tuple(image_side) if image_side is not None else self._image_pass(pixel_values)
        if callable(prompts):  # image-conditioned prompts read the same ResNet pass the decoder uses
            prompts = prompts(self._pool(vis).detach())
        if prompts is not None and prompts.vision:
            raise ValueError("CRIS has no prompted vision encoder (its image encoder is a ResNet); "
                             "use a text-only learner")
        ids, mask, gather = expand_text(input_ids, attention_mask, text_index, prompts)
        word, state, pad = self.encode_text(ids, mask, prompts.text if prompts else None)
        if gather is not None:
            word, state, pad = word[gather], state[gather], pad[gather]
        logits, fq = self.model.decode(vis, word, self.condition(state), pad, pixel_values.shape[-2:])
        return SegmentationOutput(logits=logits, tap=fq)

    def encoder_modules(self) -> list[nn.Module]:
        """The pretrained CLIP encoders (image + text), for E2E runs that train only the CRIS head."""
        return [self.model.backbone]

    def attach_points(self) -> AttachPoints:
        """Text: the 12 CLIP text blocks, whose fused `nn.MultiheadAttention` is first re-expressed with called
        q/k/v/out projections sharing its weights (`SplitSelfAttention`, same result). Vision: the ResNet's one
        attention, the attention pool (q/k/v, and `c_proj` as its output projection); it has no MLP sublayer."""
        bb = self.model.backbone
        for block in bb.transformer.resblocks:
            if isinstance(block.attn, nn.MultiheadAttention):
                block.attn = SplitSelfAttention(block.attn)
        prefix = "model.backbone.transformer.resblocks"
        text = [EncoderLayer({p: f"{prefix}.{i}.attn.{p}_proj" for p in "qkv"} | {"o": f"{prefix}.{i}.attn.out_proj"},
                             attention=f"{prefix}.{i}.attn", mlp=f"{prefix}.{i}.mlp", width=self.config.transformer_width)
                for i in range(len(bb.transformer.resblocks))]
        pool = "model.backbone.visual.attnpool"
        vision = [EncoderLayer({"q": f"{pool}.q_proj", "k": f"{pool}.k_proj", "v": f"{pool}.v_proj", "o": f"{pool}.c_proj"})]
        return AttachPoints(layers={TEXT: text, VISION: vision}, condition="condition",
                            condition_width=self.config.embed_dim)

    def make_upsampler(self) -> nn.Module:
        return CRISUpsampler(self.config.vis_dim, 64, self.config.img_size, 5)


def cris_factory(weights: str | os.PathLike | None = None, config: str | Mapping[str, Any] | None = None,
                 **options: Any) -> CRISAdapter:
    """Build the CRIS adapter.

    weights: None (random init from `config`), a file written by `tunevlseg convert-cris` (its stored config is
        used when `config` is None), or the community checkpoint itself (converted and validated on the fly).
    config: "cris-rn50" (default), "tiny", a path to a .json, or a dict of `CRISConfig` fields.
    options: `compat_extra_first_row` (bool): the original's J+1 prompt-depth behaviour (reference §9.3);
        `init_seed` (int, default 0): seeds a random init, so that two builds of the same config are identical
        (an artifact trained on a random-init model must reload into a fresh build);
        `dropout` (float in [0, 1)): the decoder's dropout, overriding the config's (also a converted file's).
        The original's E2E runs used its model yaml's 0.2; its prompt-tuning configs set 0.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown CRIS option(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(OPTIONS)}")
    compat = options.get("compat_extra_first_row", False)
    if not isinstance(compat, bool):
        raise ConfigError(f"CRIS option compat_extra_first_row: expected true/false, got {compat!r}")
    if weights is not None:
        weights = Path(weights)
        if weights.is_dir():
            found = sorted(weights.glob("*.safetensors"))
            if len(found) != 1:
                raise FileNotFoundError(f"{weights}: expected exactly one .safetensors file written by "
                                        f"`tunevlseg convert-cris`, found {len(found)}")
            weights = found[0]
        if not weights.is_file():
            raise FileNotFoundError(f"CRIS weights {weights} do not exist (pass a converted .safetensors file "
                                    "or the community checkpoint)")
        if config is None:
            config = converted_config(weights)
    cris_config = load_cris_config(config if config is not None else DEFAULT_CONFIG)
    if "dropout" in options:
        dropout = options["dropout"]
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ConfigError(f"CRIS option dropout: expected a number in [0, 1), got {dropout!r}")
        cris_config = dataclasses.replace(cris_config, dropout=float(dropout))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(options.get("init_seed", 0)))
        model = CRIS(cris_config)
    if weights is not None:
        load_cris_weights(model, weights)  # validates every key first; raises without touching the model
    model.eval()
    return CRISAdapter(model, compat_extra_first_row=compat)

