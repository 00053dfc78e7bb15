"""CLIPSeg adapter: the one place prompts enter HF's `CLIPSegForImageSegmentation`.

We run our own loops over HF's public submodules (embeddings, encoder layers, decoder parts) instead of
HF's `forward`, because prompts must be inserted into the token sequences, replaced after every layer up
to the prompt depth, and removed again before the decoder's spatial reshape. With no prompts the loops
compute exactly what HF computes (tested to 1e-5). Where and how each prompt enters follows the original
implementation (reference.md §1.0):

* text: [SOS, p_1..p_B, text tokens..., EOS, pads]; positions 0..L+B-1 are added after insertion; the
  padding mask gets B ones after SOS and is combined with the causal mask; the EOS pooling index shifts by B.
* vision: [CLS, patches..., p_1..p_B] *before* `pre_layrnorm`; deep prompts replace the last B tokens.
* deep prompts: after layer k (1-based) finishes, for k < J, the prompt slots are overwritten with row k,
  the raw prompts of layer k+1 (no position embedding, no LayerNorm).
* the vision loop stops after the last tapped layer; the taps keep the prompt slots (they hold the rows
  written after that layer, as in the original), the decoder attends over them, and CLS + prompts are
  dropped only after the last decoder layer, right before the transposed convolution.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.catalog import TEXT, VISION, VLSMS
from trainables.config import ConfigError
from trainables.resources import is_local_path
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

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_WEIGHTS = "CIDAS/clipseg-rd64-refined"  # the reference configured CIDAS/clipseg-rd64 (reference §3)
DEFAULT_CONFIG = "clipseg-rd64"  # random-init architecture used when no weights are given
IMAGE_SIZE = 352  # CLIPSeg's training resolution (the checkpoints' vision config says 224)
IMAGENET_MEAN, IMAGENET_STD = VLSMS.get("clipseg").mean, VLSMS.get("clipseg").std  # written once, on the card
OPTIONS = ("image_size", "init_seed")


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("clipseg-*.json"))


def _deep_update(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config_dict(config: str | dict | None) -> dict[str, Any]:
    """A shipped config by name ("clipseg-rd64", "rd64-refined", "tiny"), or a dict of values.

    A dict may name a shipped config under "base" and override any (nested) key of it.
    """
    if config is None:
        config = DEFAULT_CONFIG
    if isinstance(config, dict):
        extra = dict(config)
        base = load_config_dict(extra.pop("base")) if "base" in extra else {}
        return _deep_update(base, extra)
    if not isinstance(config, str):
        raise ConfigError(f"vlsm_config: expected a config name or a dict, got {config!r}")
    for name in (config, f"clipseg-{config}"):
        path = CONFIG_DIR / f"{name}.json"
        if name.startswith("clipseg-") and path.is_file():
            return json.loads(path.read_text())
    raise ConfigError(f"vlsm_config: unknown CLIPSeg config {config!r}; shipped: {', '.join(shipped_configs())}")


def _hf_config(data: dict[str, Any]):
    from transformers import CLIPSegConfig

    data = {k: v for k, v in data.items() if not k.startswith("_") and k != "segmentation_image_size"}
    return CLIPSegConfig(**data)


class CLIPSegAdapter(VLSMAdapter):
    """Wraps a `CLIPSegForImageSegmentation` (`self.model`) and its tokenizer.

    Freezing is the caller's business (`build_model` freezes everything for prompt tuning and unfreezes
    everything for E2E); branches without prompts and without trainable weights run under `no_grad`.
    """

    def __init__(self, model, tokenizer, image_size: int = IMAGE_SIZE):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        cfg = model.config
        self.extract_layers = [int(i) for i in cfg.extract_layers]
        text_layers = cfg.text_config.num_hidden_layers
        self.vision_layers_run = max(self.extract_layers) + 1  # later layers never feed the decoder
        # Row k enters layer k+1. Vision row k is still seen by the decoder for k <= layers run (it sits in
        # the last tap's prompt slots), text rows need a layer to enter: J <= min(text, vision run + 1).
        max_depth = min(text_layers, self.vision_layers_run + 1)
        self.patch_size = cfg.vision_config.patch_size
        if image_size % self.patch_size:
            raise ConfigError(f"image_size {image_size} must be a multiple of the patch size {self.patch_size}")
        self.spec = VLSMSpec(
            name="clipseg", modalities=frozenset({TEXT, VISION}), text_width=cfg.text_config.hidden_size,
            vision_width=cfg.vision_config.hidden_size, max_prompt_depth=max_depth, image_size=image_size,
            image_feature_dim=cfg.projection_dim, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        )
        # The text conditioning vector passes through this before the decoder reads it: an attach point
        # (`attach_points().condition`) for learners that adapt it; the identity otherwise.
        self.condition = nn.Identity()
        # Attach points of the decoder's taps (one module per tap, applied to the tap the decoder reads; the
        # vision stream itself is untouched) and of the tapped text layers (each maps the EOS state of text
        # layer extract_layers[i] to an addition to the conditioning vector). Empty: nothing attached.
        self.tap_adapters = nn.ModuleList()
        self.text_tap_adapters = nn.ModuleList()
        self.model.eval().requires_grad_(False)

    # -- inputs ------------------------------------------------------------------------------------------

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        max_len = self.model.config.text_config.max_position_embeddings
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    @torch.no_grad()
    def embed_tokens(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        table = self.model.clip.text_model.embeddings.token_embedding
        return table(torch.tensor(ids, device=table.weight.device)).detach().clone()  # (T, text_width)

    @torch.no_grad()
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # CoCoOp's meta-net input: projected, post-LayerNormed CLS of the full, un-prompted vision model.
        return self.encode_vision(pixel_values, None, pool=True)[1]  # (N, P)

    @torch.no_grad()
    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encode_text(input_ids, attention_mask, None)  # (N, projection_dim)

    def make_upsampler(self) -> nn.Module:
        from trainables.upsampler import PatchUpsampler

        return PatchUpsampler(self.model.config.reduce_dim, self.patch_size)

    def encoder_modules(self) -> list[nn.Module]:
        return [self.model.clip]  # both CLIP towers and their projections; the decoder is the rest

    def attach_points(self) -> AttachPoints:
        # HF's CLIPSeg attention calls its q/k/v/out nn.Linear modules, so they are attach points as they are.
        # Only the vision layers `forward` runs are listed (it stops after the last decoder tap).
        def layers(prefix: str, count: int, width: int) -> list[EncoderLayer]:
            return [EncoderLayer({p: f"{prefix}.{i}.self_attn.{p}_proj" for p in "qkv"}
                                 | {"o": f"{prefix}.{i}.self_attn.out_proj"},
                                 attention=f"{prefix}.{i}.self_attn", mlp=f"{prefix}.{i}.mlp", width=width)
                    for i in range(count)]

        cfg = self.model.config
        return AttachPoints(
            layers={TEXT: layers("model.clip.text_model.encoder.layers", cfg.text_config.num_hidden_layers,
                                 cfg.text_config.hidden_size),
                    VISION: layers("model.clip.vision_model.encoder.layers", self.vision_layers_run,
                                   cfg.vision_config.hidden_size)},
            decoder_taps=tuple(self.extract_layers), condition="condition", condition_width=cfg.projection_dim,
            taps="tap_adapters", text_taps="text_tap_adapters")

    # -- forward -----------------------------------------------------------------------------------------

    def image_side(self, pixel_values: torch.Tensor, pooled: bool = False) -> tuple[torch.Tensor, ...]:
        # The decoder's taps, then (pooled) the embedding a PromptFn reads, which needs the later layers too.
        # Grad mode as the caller has it, as in `forward` (kernels may round differently without it).
        if pooled:
            taps, features = self.encode_vision(pixel_values, None, pool=True)
            return tuple(t.detach() for t in (*taps, features))
        return tuple(t.detach() for t in self.encode_vision(pixel_values, None))

    def forward(self, pixel_values, input_ids, attention_mask, prompts: Prompts | PromptFn | None = None,
                text_index: torch.Tensor | None = None,
                image_side: tuple[torch.Tensor, ...] | None = None) -> SegmentationOutput:
        # No no_grad around frozen branches: autograd records nothing for ops whose inputs need no gradient,
        # so a frozen, un-prompted encoder costs no graph memory either way.
        taps = features = None
        if image_side is not None:
            num_taps = len(self.extract_layers)
            taps = list(image_side[:num_taps])
            features = image_side[num_taps] if len(image_side) > num_taps else None
        if callable(prompts):
            # The un-prompted pass that yields the features also yields the decoder's taps, unless the
            # prompts it produces change the vision pass itself.
            if features is None:
                taps, features = self.encode_vision(pixel_values, None, pool=True)
            prompts = prompts(features.detach())
            if prompts.vision is not None:
                taps = None
        prompts = prompts or Prompts()
        if image_side is not None and prompts.vision is not None:
            raise ValueError("image_side holds un-prompted image features; vision prompts need the image pass")
        ids, mask, gather = expand_text(input_ids, attention_mask, text_index, prompts)
        if len(self.text_tap_adapters):
            cond, states = self.encode_text(ids, mask, prompts.text, text_taps=True)
            cond = self.condition(cond) + sum(a(h) for a, h in zip(self.text_tap_adapters, states))
        else:
            cond = self.condition(self.encode_text(ids, mask, prompts.text))
        if gather is not None:
            cond = cond[gather]
        if taps is None:
            taps = self.encode_vision(pixel_values, prompts.vision)
        if len(self.tap_adapters):
            taps = [a(t) for a, t in zip(self.tap_adapters, taps)]
        num_vision = 0 if prompts.vision is None else prompts.vision[0].shape[-2]
        logits, grid = self.decode(taps, cond, num_vision)
        return SegmentationOutput(logits=logits, tap=grid)

    def encode_text(self, input_ids, attention_mask, rows: list[torch.Tensor] | None, text_taps: bool = False):
        """Conditional embedding (N, projection_dim); `rows[k]` are the prompts entering layer k+1. With
        `text_taps`, also the EOS states (N, text width) of the text layers at `extract_layers` (before the
        final LayerNorm), for `text_tap_adapters`."""
        tm = self.model.clip.text_model
        max_len = tm.config.max_position_embeddings
        n, length = input_ids.shape
        embeds = tm.embeddings.token_embedding(input_ids)  # (N, L, H)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        num = 0
        if rows:
            first = _per_sample(rows[0], n).to(embeds.dtype)  # (N, B, H)
            num = first.shape[1]
            keep = min(length, max_len - num) - 1  # text tokens after SOS that still fit (all, in practice)
            # Built on the device: a CPU tensor copied over would be a blocking host->device sync every step.
            idx = torch.arange(1, keep + 1, device=input_ids.device)
            idx[-1] = length - 1
            embeds = torch.cat([embeds[:, :1], first, embeds[:, idx]], dim=1)
            ones = attention_mask.new_ones(n, num)
            attention_mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, idx]], dim=1)
        positions = torch.arange(embeds.shape[1], device=embeds.device)
        hidden = embeds + tm.embeddings.position_embedding(positions)[None]
        mask = self._text_mask(attention_mask, hidden)
        ids = input_ids.to(torch.int)
        eos = ids.argmax(-1) if tm.eos_token_id == 2 else (ids == tm.eos_token_id).int().argmax(-1)
        eos = (eos + num).clamp(max=hidden.shape[1] - 1)  # HF's pooling rule (legacy eos id 2: max id) shifted by B
        rows_n = torch.arange(n, device=hidden.device)
        states = []
        for k, layer in enumerate(tm.encoder.layers, start=1):
            hidden = layer(hidden, mask, is_causal=True)
            if rows and k < len(rows):  # fresh prompts for layer k+1 replace this layer's prompt outputs
                hidden = torch.cat([hidden[:, :1], _per_sample(rows[k], n).to(hidden.dtype), hidden[:, 1 + num:]], 1)
            if text_taps and k - 1 in self.extract_layers:
                states.append(hidden[rows_n, eos.to(hidden.device)])
        hidden = tm.final_layer_norm(hidden)
        cond = self.model.clip.text_projection(hidden[rows_n, eos.to(hidden.device)])
        return (cond, states) if text_taps else cond

    def _text_mask(self, attention_mask: torch.Tensor, hidden: torch.Tensor):
        """The causal + padding mask of the text layers, (N, 1, L, L), made with tensor ops only.

        HF's `create_causal_mask` first asks whether any token is padded (`padding_mask.all()` read on the
        host) so that SDPA may drop the mask: on a GPU that is a sync in every step. The mask here is what it
        builds otherwise: boolean for SDPA (True = attend), additive for eager attention; other attention
        implementations keep HF's own mask. (Padding is on the right and attention causal, so no kept
        position ever sees a pad; the padding part only keeps pad positions' own rows as HF has them.)"""
        config = self.model.clip.text_model.config
        impl = getattr(config, "_attn_implementation", None) or "eager"
        if impl not in ("sdpa", "eager"):
            from transformers.masking_utils import create_causal_mask

            return create_causal_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask,
                                      past_key_values=None)
        length = hidden.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=hidden.device).tril()
        keep = causal[None, None] & attention_mask.to(torch.bool)[:, None, None, :]
        if impl == "sdpa":
            return keep
        return torch.zeros(keep.shape, dtype=hidden.dtype, device=hidden.device).masked_fill_(
            ~keep, torch.finfo(hidden.dtype).min)

    def encode_vision(self, pixel_values, rows: list[torch.Tensor] | None, pool: bool = False):
        """Hidden states of the tapped layers, (N, 1 + patches + B, Hv) each, in layer order.

        pool=True runs every layer (not only up to the last tap) and also returns the projected,
        post-LayerNormed CLS (N, projection_dim): HF's `get_image_features` of the same pass."""
        vm = self.model.clip.vision_model
        hidden = vm.embeddings(pixel_values, interpolate_pos_encoding=True)  # (N, 1 + patches, Hv)
        n = hidden.shape[0]
        num = 0
        if rows:
            first = _per_sample(rows[0], n).to(hidden.dtype)
            num = first.shape[1]
            hidden = torch.cat([hidden, first], dim=1)  # before pre-LN: the original found it more stable
        hidden = vm.pre_layrnorm(hidden)
        taps = []
        layers = vm.encoder.layers if pool else vm.encoder.layers[: self.vision_layers_run]
        for k, layer in enumerate(layers, start=1):
            hidden = layer(hidden, None)
            if rows and k < len(rows):
                hidden = torch.cat([hidden[:, : hidden.shape[1] - num], _per_sample(rows[k], n).to(hidden.dtype)], 1)
            if k - 1 in self.extract_layers:
                taps.append(hidden)
        if not pool:
            return taps
        return taps, self.model.clip.visual_projection(vm.post_layernorm(hidden[:, 0]))

    def decode(self, taps: list[torch.Tensor], cond: torch.Tensor, num_prompts: int):
        """HF's decoder over all tokens, then CLS and prompts dropped. Returns logits (N,1,S,S), grid (N,R,g,g)."""
        dec = self.model.decoder
        out = None
        for i, (act, layer, reduce) in enumerate(zip(taps[::-1], dec.layers, dec.reduces)):
            out = reduce(act) if out is None else reduce(act) + out
            if i == dec.conditional_layer:  # FiLM with the text embedding
                out = dec.film_mul(cond)[:, None] * out + dec.film_add(cond)[:, None]
            out = layer(out, attention_mask=None)
        out = out[:, 1 : out.shape[1] - num_prompts]  # (N, g*g, R)
        side = int(round(out.shape[1] ** 0.5))
        grid = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], side, side)
        return dec.transposed_convolution(grid), grid


def _per_sample(row: torch.Tensor, n: int) -> torch.Tensor:
    """(B, W) shared prompts -> (N, B, W); (N, B, W) per-sample prompts pass through."""
    return row.unsqueeze(0).expand(n, -1, -1) if row.dim() == 2 else row


def _load_tokenizer(weights: str):
    from trainables.tokenizer import clip_tokenizer

    path = Path(weights).expanduser()
    if path.is_dir() and not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        return clip_tokenizer()  # a local checkpoint without tokenizer files (the mini models): CLIP's BPE
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(weights)
    except (OSError, ValueError, TypeError) as e:  # no tokenizer files there (or offline): CLIP's own BPE
        warnings.warn(f"no tokenizer found with weights {weights!r} ({type(e).__name__}); using CLIP's BPE",
                      stacklevel=3)
        return clip_tokenizer()


def build_clipseg(weights: str | None = None, config: str | dict | None = None, **options) -> CLIPSegAdapter:
    """VLSMS factory. `weights`: HF hub id or local directory of a CLIPSeg checkpoint; None builds a
    random-init model of `config` (deterministic: seeded with `init_seed`, default 0), offline.

    Options: `image_size` (input resolution, default 352 or the config's `segmentation_image_size`),
    `init_seed`.
    """
    from transformers import CLIPSegForImageSegmentation

    from trainables.tokenizer import clip_tokenizer

    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"vlsm_options: unknown option(s) {', '.join(map(repr, unknown))} for clipseg; "
                          f"allowed: {', '.join(OPTIONS)}")
    if weights is None:
        data = load_config_dict(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(options.get("init_seed", 0)))
            model = CLIPSegForImageSegmentation(_hf_config(data))
        tokenizer = clip_tokenizer(data.get("text_config", {}).get("max_position_embeddings", 77))
        default_size = data.get("segmentation_image_size", IMAGE_SIZE)
    else:
        path = Path(weights).expanduser()
        looks_local = is_local_path(weights)
        if looks_local and not path.is_dir():
            raise FileNotFoundError(f"weights: {weights!r} is not a directory with a CLIPSeg checkpoint "
                                    f"(expected config.json + model.safetensors, or an HF hub id like {DEFAULT_WEIGHTS})")
        source = str(path) if looks_local else weights
        try:
            # fp32 whatever the file stores (the mini checkpoints are fp16 to stay small); AMP casts per op.
            model = CLIPSegForImageSegmentation.from_pretrained(source, dtype=torch.float32)
        except OSError as e:
            raise FileNotFoundError(f"weights: cannot load CLIPSeg weights {weights!r}: {str(e).splitlines()[0]}") from None
        tokenizer = _load_tokenizer(source)
        # CIDAS checkpoints run at 352 px (positions interpolated from 224); a checkpoint trained at another
        # size (the mini models) records it in its config.
        default_size = int(getattr(model.config, "segmentation_image_size", None) or IMAGE_SIZE)
    image_size = int(options.get("image_size") or default_size)
    return CLIPSegAdapter(model, tokenizer, image_size=image_size)


