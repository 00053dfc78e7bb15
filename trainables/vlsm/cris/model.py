"""CRIS (Wang et al., CVPR 2022) as used by TuneVLSeg: CLIP RN50 + FPN neck + vision-language decoder + projector.

Module and parameter names equal the original `CRIS.pytorch` state-dict keys (`backbone.visual.*`,
`backbone.transformer.resblocks.N.*`, `neck.*`, `decoder.*`, `proj.*`), so the community checkpoint loads with
`strict=True` after the `module.` prefix is stripped (see `cris_convert.py`). Architecture facts:
`shared/docs/reference.md` §4. This file is architecture only; prompts enter in `cris.py`.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from trainables.config import ConfigError, from_dict
from trainables.upsampler import conv_after_upsample

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class CRISConfig:
    """Defaults = the paper's CRIS: OpenAI CLIP RN50 backbone, `configs/model/coop/cris.yaml` head."""

    # CLIP backbone (values `build_model` reads off OpenAI's RN50.pt)
    embed_dim: int = 1024  # CLIP joint dim = C5 channels = text state dim = CRIS `word_dim`
    image_resolution: int = 224  # CLIP pre-training resolution; fixes the 7x7 attention-pool position grid
    vision_layers: tuple[int, ...] = (3, 4, 6, 3)
    vision_width: int = 64
    context_length: int = 77
    vocab_size: int = 49408
    transformer_width: int = 512
    transformer_heads: int = 8
    transformer_layers: int = 12
    # CRIS head
    fpn_in: tuple[int, ...] = (512, 1024, 1024)
    fpn_out: tuple[int, ...] = (256, 512, 1024)
    vis_dim: int = 512
    word_dim: int = 1024
    num_layers: int = 3
    num_head: int = 8
    dim_ffn: int = 2048
    dropout: float = 0.0  # 0.2 in the model yaml, overridden to 0 by the prompt-tuning experiment configs
    img_size: int = 416

    def __post_init__(self) -> None:
        w = self.vision_width
        checks = [
            (len(self.vision_layers) == 4, "vision_layers must list 4 stage depths, e.g. [3, 4, 6, 3]"),
            (len(self.fpn_in) == 3 and len(self.fpn_out) == 3, "fpn_in and fpn_out must have 3 entries"),
            (self.fpn_in[0] == 8 * w and self.fpn_in[1] == 16 * w,
             f"fpn_in[:2] must be the C3/C4 widths {8 * w}, {16 * w} (8x and 16x vision_width)"),
            (self.fpn_in[2] == self.embed_dim == self.word_dim, "fpn_in[2], embed_dim and word_dim must be equal"),
            (self.vis_dim == self.fpn_out[1] == self.transformer_width,
             "vis_dim, fpn_out[1] and transformer_width must be equal (the decoder mixes both)"),
            (self.vis_dim % 4 == 0 and self.vis_dim % self.num_head == 0,
             "vis_dim must be divisible by 4 (2-D sine positions) and by num_head"),
            (self.transformer_width % self.transformer_heads == 0, "transformer_width % transformer_heads != 0"),
            (self.img_size % 32 == 0 and self.image_resolution % 32 == 0,
             "img_size and image_resolution must be multiples of 32 (the ResNet stride)"),
            (w % 2 == 0 and (32 * w) % 64 == 0, "vision_width must be even (stem) and 32*width divisible by 64"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"CRIS config: {message}")

    @property
    def vision_heads(self) -> int:
        return self.vision_width * 32 // 64  # CLIP's rule (32 heads for RN50)


def load_cris_config(config: str | Mapping[str, Any] | CRISConfig | None) -> CRISConfig:
    """A `CRISConfig` from a shipped name ("cris-rn50", "rn50", "tiny"), a JSON path or a dict of fields."""
    if config is None:
        config = "cris-rn50"
    if isinstance(config, CRISConfig):
        return config
    if isinstance(config, Mapping):
        return from_dict(CRISConfig, config, "CRIS config")
    path = Path(config)
    if not path.suffix == ".json":
        stem = config if config.startswith("cris-") else f"cris-{config}"
        path = CONFIG_DIR / f"{stem}.json"
        if not path.is_file():
            shipped = sorted(p.stem for p in CONFIG_DIR.glob("cris-*.json"))
            raise ConfigError(f"unknown CRIS config {config!r}; shipped: {', '.join(shipped)} (or pass a dict / .json)")
    if not path.is_file():
        raise FileNotFoundError(f"CRIS config file {path} does not exist")
    data = json.loads(path.read_text())
    data.pop("_comment", None)
    return from_dict(CRISConfig, data, f"CRIS config {path.name}")


def config_to_dict(cfg: CRISConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


# --------------------------------------------------------------------------------------------------------
# CLIP ModifiedResNet with CRIS's attention pool (returns C3, C4, C5)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        # CLIP's anti-aliased variant: every conv has stride 1, an avg-pool after conv2 does the striding.
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            # key names "downsample.0/1" come from this ordered dict ("-1" holds no weights)
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class AttentionPool2d(nn.Module):
    """CRIS's attention pool: every spatial token attends to all others (no pooled CLS token) and a 1x1
    conv + BN residual ("connect") is added, so the output is a C5 *map* (N, output_dim, H, W)."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__()
        self.spacial_dim = spacial_dim
        self.num_heads = num_heads
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.connect = nn.Sequential(nn.Conv2d(embed_dim, output_dim, 1, bias=False), nn.BatchNorm2d(output_dim))

    def spatial_positions(self, height: int, width: int) -> torch.Tensor:
        """The pretrained grid positions (CLS entry dropped) bicubically resized to (height, width): (HW, C)."""
        s = self.spacial_dim
        grid = self.positional_embedding[1:].reshape(1, s, s, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
        return grid.flatten(2)[0].transpose(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        residual = self.connect(x)
        tokens = x.flatten(2).permute(2, 0, 1)  # (HW, N, C)
        tokens = tokens + self.spatial_positions(h, w).to(tokens.dtype)[:, None]
        # The projections are called as modules (not read as weights), so that a wrapper of one (LoRA) acts.
        out = _attend(self.q_proj(tokens), self.k_proj(tokens), self.v_proj(tokens), self.num_heads)
        out = self.c_proj(out).permute(1, 2, 0).reshape(n, -1, h, w)
        return F.relu(out + residual)


class ModifiedResNet(nn.Module):
    """CLIP's ResNet: 3-conv stem + avg-pool, anti-aliased Bottlenecks, attention pool."""

    def __init__(self, layers: tuple[int, ...], output_dim: int, heads: int, input_resolution: int, width: int):
        super().__init__()
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = self.relu(bn(conv(x)))
        x = self.layer1(self.avgpool(x))
        c3 = self.layer2(x)  # stride 8
        c4 = self.layer3(c3)  # stride 16
        c5 = self.attnpool(self.layer4(c4))  # stride 32
        return c3, c4, c5


# --------------------------------------------------------------------------------------------------------
# CLIP text transformer


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, d_model * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(d_model * 4, d_model)),
        ]))
        self.ln_2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (L, N, D); attn_mask (L, L) bool, True = blocked; key_padding_mask (N, L) bool, True = pad."""
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask, key_padding_mask=key_padding_mask)[0]
        return x + self.mlp(self.ln_2(x))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention of projected (L, N, D) sequences over `heads` heads -> (L, N, D), before
    the output projection. `mask` (N or 1, 1, L, S) bool, True = may attend."""
    length, n, d = q.shape

    def heads_first(t: torch.Tensor) -> torch.Tensor:  # (L, N, D) -> (N, heads, L, D / heads)
        return t.reshape(t.shape[0], n, heads, d // heads).permute(1, 2, 0, 3)

    out = F.scaled_dot_product_attention(heads_first(q), heads_first(k), heads_first(v), attn_mask=mask)
    return out.permute(2, 0, 1, 3).reshape(length, n, d)


class SplitSelfAttention(nn.Module):
    """An `nn.MultiheadAttention` self-attention re-expressed with separate q/k/v/out `nn.Linear` modules that
    share its frozen weights (views of `in_proj_weight`): what weight-space learners attach to. CLIP-LoRA
    does the same with CLIP's fused attention; peft's own `nn.MultiheadAttention` LoRA merges the update into
    the fused weight before every forward and subtracts it after, which would let the shared frozen weights
    drift by rounding, and has one LoRA A for q, k and v together. Same call and result as the module it
    replaces: (x, x, x, attn_mask=(L, L) bool True = blocked, key_padding_mask=(N, L) bool True = pad)."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        d = mha.embed_dim
        self.num_heads = mha.num_heads
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            lin = nn.Linear(d, d, device=mha.in_proj_weight.device, dtype=mha.in_proj_weight.dtype)
            lin.weight = nn.Parameter(mha.in_proj_weight[i * d:(i + 1) * d], requires_grad=mha.in_proj_weight.requires_grad)
            lin.bias = nn.Parameter(mha.in_proj_bias[i * d:(i + 1) * d], requires_grad=mha.in_proj_bias.requires_grad)
            setattr(self, name, lin)
        self.out_proj = mha.out_proj

    def forward(self, x: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                need_weights: bool = False, attn_mask: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        blocked = None
        if attn_mask is not None:
            blocked = attn_mask[None, None]
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]
            blocked = pad if blocked is None else blocked | pad
        mask = None if blocked is None else ~blocked
        out = _attend(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.num_heads, mask)
        return self.out_proj(out), None


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])


class CLIPBackbone(nn.Module):
    """OpenAI CLIP (ResNet variant) with CRIS's changes: `encode_image` returns (C3, C4, C5) maps and
    `encode_text` returns every token's feature plus the projected EOS state."""

    def __init__(self, cfg: CRISConfig):
        super().__init__()
        self.context_length = cfg.context_length
        self.visual = ModifiedResNet(cfg.vision_layers, cfg.embed_dim, cfg.vision_heads, cfg.image_resolution,
                                     cfg.vision_width)
        self.transformer = Transformer(cfg.transformer_width, cfg.transformer_layers, cfg.transformer_heads)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.transformer_width))
        self.ln_final = nn.LayerNorm(cfg.transformer_width)
        self.text_projection = nn.Parameter(torch.empty(cfg.transformer_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self._init_like_clip()

    def _init_like_clip(self) -> None:
        # CLIP's own initialisation; only random-init models (tests, pre-training from scratch) see it.
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        pool = self.visual.attnpool
        for lin in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
            nn.init.normal_(lin.weight, std=pool.c_proj.in_features**-0.5)
        for name, param in self.visual.named_parameters():
            if name.startswith("layer") and name.endswith("bn3.weight"):
                nn.init.zeros_(param)
        width, layers = self.transformer.width, self.transformer.layers
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=width**-0.5 * (2 * layers) ** -0.5)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=width**-0.5 * (2 * layers) ** -0.5)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.visual(image)

    def encode_text(self, input_ids: torch.Tensor, key_padding_mask: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-prompted text encoding: (N, L, width) token features and (N, embed_dim) EOS state."""
        x = self.token_embedding(input_ids) + self.positional_embedding[: input_ids.shape[1]]
        x = x.permute(1, 0, 2)
        causal = causal_mask(x.shape[0], x.device)
        for block in self.transformer.resblocks:
            x = block(x, attn_mask=causal, key_padding_mask=key_padding_mask)
        x = self.ln_final(x.permute(1, 0, 2))
        # EOS has the highest id in CLIP's vocabulary and argmax returns its first occurrence
        state = x[torch.arange(x.shape[0], device=x.device), input_ids.argmax(dim=-1)] @ self.text_projection
        return x, state


def causal_mask(length: int, device: torch.device | None = None) -> torch.Tensor:
    """(L, L) bool, True above the diagonal: token i may not look at later tokens."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)


# --------------------------------------------------------------------------------------------------------
# CRIS head: FPN neck, vision-language decoder, projector


def conv_layer(in_dim: int, out_dim: int, kernel_size: int = 1, padding: int = 0, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_dim, out_dim, kernel_size, stride, padding, bias=False),
                         nn.BatchNorm2d(out_dim), nn.ReLU(True))


def linear_layer(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim), nn.ReLU(True))


class CoordConv(nn.Module):
    """Appends x/y coordinate channels in [-1, 1] before a 3x3 conv_layer."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv1 = conv_layer(in_channels + 2, out_channels, kernel_size, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
        y, xg = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack([xg, y]).expand(n, -1, -1, -1)  # x channel first, as in CRIS
        return self.conv1(torch.cat([x, coords], dim=1))


class FPN(nn.Module):
    """Text-gated feature pyramid: C5 is multiplied by the projected sentence state, then fused top-down with
    C4 and C3 into one (N, vis_dim, H/16, W/16) query map."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: tuple[int, ...]):
        super().__init__()
        c3_in, c4_in, c5_in = in_channels
        o3, o4, o5 = out_channels
        self.txt_proj = linear_layer(c5_in, o5)
        self.f1_v_proj = conv_layer(c5_in, o5, 1, 0)
        self.norm_layer = nn.Sequential(nn.BatchNorm2d(o5), nn.ReLU(True))
        self.f2_v_proj = conv_layer(c4_in, o4, 3, 1)
        self.f2_cat = conv_layer(o5 + o4, o4, 1, 0)
        self.f3_v_proj = conv_layer(c3_in, o3, 3, 1)
        self.f3_cat = conv_layer(o3 + o4, o4, 1, 0)
        self.f4_proj5 = conv_layer(o5, o4, 3, 1)
        self.f4_proj4 = conv_layer(o4, o4, 3, 1)
        self.f4_proj3 = conv_layer(o4, o4, 3, 1)
        self.aggr = conv_layer(3 * o4, o4, 1, 0)
        self.coordconv = nn.Sequential(CoordConv(o4, o4, 3, 1), conv_layer(o4, o4, 3, 1))

    def forward(self, vis: tuple[torch.Tensor, torch.Tensor, torch.Tensor], state: torch.Tensor) -> torch.Tensor:
        v3, v4, v5 = vis
        gate = self.txt_proj(state)[:, :, None, None]  # (N, o5, 1, 1)
        f5 = self.norm_layer(self.f1_v_proj(v5) * gate)  # H/32
        f4 = self.f2_cat(torch.cat([self.f2_v_proj(v4), _up2(f5)], dim=1))  # H/16
        f3 = F.avg_pool2d(self.f3_v_proj(v3), 2, 2)  # H/8 -> H/16
        f3 = self.f3_cat(torch.cat([f3, f4], dim=1))
        fq = torch.cat([self.f4_proj3(f3), self.f4_proj4(f4), _up2(self.f4_proj5(f5))], dim=1)
        return self.coordconv(self.aggr(fq))


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def sine_positions_1d(d_model: int, length: int, device=None) -> torch.Tensor:
    """(L, 1, d) sinusoidal positions (base 10000), sin on even channels, cos on odd."""
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe[:, None]


def sine_positions_2d(d_model: int, height: int, width: int, device=None) -> torch.Tensor:
    """(HW, 1, d) 2-D sine positions: first half of the channels encode x, second half y (as in CRIS)."""
    half = d_model // 2
    freq = torch.exp(torch.arange(0, half, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / half))
    xs = torch.arange(width, dtype=torch.float32, device=device)[:, None] * freq  # (W, half/2)
    ys = torch.arange(height, dtype=torch.float32, device=device)[:, None] * freq  # (H, half/2)
    pe = torch.zeros(d_model, height, width, device=device)
    pe[0:half:2] = torch.sin(xs).T[:, None, :].expand(-1, height, -1)
    pe[1:half:2] = torch.cos(xs).T[:, None, :].expand(-1, height, -1)
    pe[half::2] = torch.sin(ys).T[:, :, None].expand(-1, -1, width)
    pe[half + 1::2] = torch.cos(ys).T[:, :, None].expand(-1, -1, width)
    return pe.reshape(d_model, 1, height * width).permute(2, 1, 0)


class TransformerDecoderLayer(nn.Module):
    """Pre-norm layer: self-attention over the visual grid, cross-attention to the words, FFN; each attention
    output gets an extra LayerNorm before the residual add."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(d_model)
        self.cross_attn_norm = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, kdim=d_model, vdim=d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.ReLU(True), nn.Dropout(dropout),
                                 nn.LayerNorm(dim_feedforward), nn.Linear(dim_feedforward, d_model))
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, vis, txt, vis_pos, txt_pos, pad_mask):
        """vis (HW, N, d), txt (L, N, d), vis_pos (HW, 1, d), txt_pos (L, 1, d), pad_mask (N, L) True = pad."""
        h = self.norm1(vis)
        q = h + vis_pos
        vis = vis + self.dropout1(self.self_attn_norm(self.self_attn(q, q, value=h, need_weights=False)[0]))
        h = self.norm2(vis)
        h = self.multihead_attn(query=h + vis_pos, key=txt + txt_pos, value=txt, key_padding_mask=pad_mask,
                                need_weights=False)[0]
        vis = vis + self.dropout2(self.cross_attn_norm(h))
        return vis + self.dropout3(self.ffn(self.norm3(vis)))


class TransformerDecoder(nn.Module):
    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_ffn: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            [TransformerDecoderLayer(d_model, nhead, dim_ffn, dropout) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(d_model)

    def forward(self, vis: torch.Tensor, txt: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """vis (N, C, H, W), txt (N, L, C), pad_mask (N, L) -> (N, C, H, W)."""
        n, c, h, w = vis.shape
        vis_pos = sine_positions_2d(c, h, w, vis.device).to(vis.dtype)
        txt_pos = sine_positions_1d(txt.shape[-1], txt.shape[1], vis.device).to(txt.dtype)
        out = vis.flatten(2).permute(2, 0, 1)
        txt = txt.permute(1, 0, 2)
        for layer in self.layers:
            out = layer(out, txt, vis_pos, txt_pos, pad_mask)
        return self.norm(out).permute(1, 2, 0).reshape(n, c, h, w)


class Projector(nn.Module):
    """Upsamples the decoder map 4x and convolves it with a per-sample 3x3 kernel (+ bias) predicted from
    the sentence state: one dynamic filter per referring expression."""

    def __init__(self, word_dim: int, in_dim: int, kernel_size: int = 3):
        super().__init__()
        self.in_dim = in_dim
        self.kernel_size = kernel_size
        self.vis = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear"),
            conv_layer(in_dim * 2, in_dim * 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear"),
            conv_layer(in_dim * 2, in_dim, 3, padding=1),
            nn.Conv2d(in_dim, in_dim, 1),
        )
        self.txt = nn.Linear(word_dim, in_dim * kernel_size * kernel_size + 1)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        x = self.vis(x)
        n, c, h, w = x.shape
        params = self.txt(state)
        weight = params[:, :-1].reshape(n, c, self.kernel_size, self.kernel_size)
        # grouped conv = one independent (c -> 1) convolution per sample
        out = F.conv2d(x.reshape(1, n * c, h, w), weight, bias=params[:, -1], padding=self.kernel_size // 2, groups=n)
        return out.transpose(0, 1)  # (N, 1, h, w)


class CRIS(nn.Module):
    def __init__(self, cfg: CRISConfig):
        super().__init__()
        self.config = cfg
        self.backbone = CLIPBackbone(cfg)
        self.neck = FPN(cfg.fpn_in, cfg.fpn_out)
        self.decoder = TransformerDecoder(cfg.num_layers, cfg.vis_dim, cfg.num_head, cfg.dim_ffn, cfg.dropout)
        self.proj = Projector(cfg.word_dim, cfg.vis_dim // 2, 3)

    def decode(self, vis, word: torch.Tensor, state: torch.Tensor, pad_mask: torch.Tensor,
               out_size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Neck + decoder + projector. Returns logits (N, 1, *out_size) and the decoder map fq (N, vis_dim, h, w)."""
        fq = self.neck(vis, state)
        fq = self.decoder(fq, word, pad_mask)
        pred = self.proj(fq, state)
        size = tuple(out_size) if out_size is not None else (self.config.img_size, self.config.img_size)
        logits = F.interpolate(pred, size=size, mode="bicubic", align_corners=True)
        return logits, fq

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """Plain (un-prompted) CRIS: image (N, 3, S, S), ids (N, L), pad_mask (N, L) True = pad -> (N, 1, S, S)."""
        vis = self.backbone.encode_image(image)
        word, state = self.backbone.encode_text(input_ids, pad_mask)
        return self.decode(vis, word, state, pad_mask, image.shape[-2:])[0]


class CRISUpsampler(nn.Module):
    """TuneVLSeg's learnable upsampler for CRIS: 1x1 conv (no bias) -> bilinear to the input size -> 5x5 conv
    (replicate padding). Reads the decoder map fq; 512*64 + 64*25 + 1 = 34,369 parameters at full size."""

    def __init__(self, in_dim: int = 512, hidden: int = 64, size: int = 416, kernel_size: int = 5):
        super().__init__()
        self.reduce = nn.Conv2d(in_dim, hidden, 1, bias=False)
        self.upsample = nn.Upsample(size=(size, size), mode="bilinear")
        self.conv = nn.Conv2d(hidden, 1, kernel_size, padding="same", padding_mode="replicate")

    def forward(self, fq: torch.Tensor) -> torch.Tensor:
        # conv(upsample(x)) in its fast, equal form (trainables.upsampler.conv_after_upsample says why)
        return conv_after_upsample(self.reduce(fq), self.upsample, self.conv)
