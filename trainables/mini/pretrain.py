"""Pretrain the mini VLSMs on the synthetic referring-segmentation corpus (`make pretrain-mini`).

The mini models are the real architectures at tiny sizes. They are trained end to end (every weight) on
`trainables.mini.corpus` with a fixed seed, then written in each VLSM's own checkpoint format so that they
load through exactly the path real weights take (`from_pretrained` for CLIPSeg). Held-out zero-shot Dice
of the pretrained and of the random-init model goes into the model card.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from trainables.losses import dice_bce_loss
from trainables.metrics import SegMetrics
from trainables.mini.corpus import make_batch
from trainables.tokenizer import clip_tokenizer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# CLIPSeg at 96 px: ViT with 8-px patches (12x12 tokens), 6 vision and 6 text layers, narrow widths.
CLIPSEG_MINI = {
    "text_config": {"vocab_size": 49408, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 6,
                    "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": 0,
                    "eos_token_id": 2, "pad_token_id": 1},
    "vision_config": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 6,
                      "num_attention_heads": 4, "image_size": 96, "patch_size": 8},
    "projection_dim": 64, "reduce_dim": 32, "extract_layers": [1, 3, 5],
    "decoder_num_attention_heads": 4, "decoder_intermediate_size": 128, "conditional_layer": 0,
    "use_complex_transposed_convolution": False,
}


# CRIS at 96 px: a narrow ResNet (width 16, stages 1-2-2-1), a 6-layer 64-wide CLIP text transformer and a
# 2-layer vision-language decoder; same modules and key names as cris-rn50.
CRIS_MINI = {
    "embed_dim": 128, "image_resolution": 96, "vision_layers": [1, 2, 2, 1], "vision_width": 16,
    "context_length": 77, "vocab_size": 49408, "transformer_width": 64, "transformer_heads": 4,
    "transformer_layers": 6, "fpn_in": [128, 256, 128], "fpn_out": [32, 64, 128], "vis_dim": 64,
    "word_dim": 128, "num_layers": 2, "num_head": 4, "dim_ffn": 256, "dropout": 0.0, "img_size": 96,
}
DEFAULT_STEPS = {"clipseg": 3000, "cris": 2000}  # sized so both fit in ~20 min on 2 CPU cores
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PretrainConfig:
    vlsm: str = "clipseg"
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    seed: int = 0
    image_size: int = 96
    eval_samples: int = 512
    eval_seed: int = 10_000  # held-out corpus samples: a different stream from the training one


def build_clipseg_mini(seed: int):
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    torch.manual_seed(seed)
    return CLIPSegForImageSegmentation(CLIPSegConfig(**CLIPSEG_MINI))


def _to_tensor(imgs: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def build_cris_mini(seed: int):
    from trainables.vlsm.cris.adapter import cris_factory

    adapter = cris_factory(config=dict(CRIS_MINI), init_seed=seed)
    adapter.requires_grad_(True)
    return adapter


def _cris_logits(adapter, x, tokens):
    return adapter(x, tokens["input_ids"], tokens["attention_mask"], None).logits


def _clipseg_logits(model, x, tokens):
    out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=x)
    return out.logits.reshape(x.shape[0], 1, *x.shape[-2:])


@torch.no_grad()
def zero_shot_dice(model, cfg: PretrainConfig, logits_fn, mean, std) -> dict[str, float]:
    model.eval()
    tok = clip_tokenizer()
    rng = np.random.default_rng(cfg.eval_seed)
    m = SegMetrics()
    for _ in range(math.ceil(cfg.eval_samples / 64)):
        imgs, phrases, masks = make_batch(rng, 64, cfg.image_size)
        tokens = tok([p + "." for p in phrases], padding=True, return_tensors="pt")
        logits = logits_fn(model, _to_tensor(imgs, mean, std), tokens)
        m.update_from_logits(logits, torch.from_numpy(masks).unsqueeze(1))
    return m.compute()


def pretrain(cfg: PretrainConfig, out_dir: str | Path, log=print) -> dict:
    out_dir = Path(out_dir)
    if cfg.vlsm == "clipseg":
        model, arch = build_clipseg_mini(cfg.seed), CLIPSEG_MINI
        logits_fn, mean, std = _clipseg_logits, IMAGENET_MEAN, IMAGENET_STD
    elif cfg.vlsm == "cris":
        model, arch = build_cris_mini(cfg.seed), CRIS_MINI
        logits_fn, mean, std = _cris_logits, CLIP_MEAN, CLIP_STD
    else:
        raise ValueError(f"no mini configuration for VLSM {cfg.vlsm!r}; allowed: clipseg, cris")
    random_init = zero_shot_dice(model, cfg, logits_fn, mean, std)
    log(f"random-init held-out zero-shot: dice {random_init['dice']:.4f} iou {random_init['iou']:.4f}")

    tok = clip_tokenizer()
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    model.train()
    t0, running = time.time(), 0.0
    for step in range(cfg.steps):
        imgs, phrases, masks = make_batch(rng, cfg.batch_size, cfg.image_size)
        tokens = tok([p + "." for p in phrases], padding=True, return_tensors="pt")
        logits = logits_fn(model, _to_tensor(imgs, mean, std), tokens)
        loss = dice_bce_loss(logits, torch.from_numpy(masks).unsqueeze(1).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"step {step:5d}  loss {running:.4f}  lr {sched.get_last_lr()[0]:.2e}  {time.time() - t0:6.0f}s")
    seconds = time.time() - t0
    pretrained = zero_shot_dice(model, cfg, logits_fn, mean, std)
    log(f"pretrained held-out zero-shot: dice {pretrained['dice']:.4f} iou {pretrained['iou']:.4f}")

    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    # Each VLSM's own checkpoint format, so the mini models load exactly like real weights: HF
    # `save_pretrained` (config.json + model.safetensors) for CLIPSeg, the `convert-cris` safetensors file for
    # CRIS. Stored in fp16 to keep the committed files small (the 49,408-row CLIP token table dominates);
    # the adapters load frozen weights as fp32.
    if cfg.vlsm == "clipseg":
        model.config.segmentation_image_size = cfg.image_size  # read by the adapter (default 352 otherwise)
        model.to(torch.float16).save_pretrained(out_dir)
    else:
        from trainables.vlsm.cris.convert import save_converted

        state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.model.state_dict().items()}
        save_converted(state, out_dir / "cris-mini.safetensors", arch, source="make pretrain-mini")
    model.to(torch.float32)
    card = {
        "model": f"{cfg.vlsm}-mini", "pretrain_config": asdict(cfg), "architecture": arch,
        "corpus": "trainables/mini/corpus.py (synthetic shapes/colours/textures/positions with phrases)",
        "train_seconds": round(seconds, 1), "threads": torch.get_num_threads(),
        "zero_shot_heldout": {"pretrained": pretrained, "random_init": random_init},
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
    }
    (out_dir / "pretrain.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m trainables.mini.pretrain", description=__doc__)
    ap.add_argument("--vlsm", choices=["clipseg", "cris"], required=True)
    ap.add_argument("--out", required=True, help="output directory (e.g. models/clipseg-mini)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or DEFAULT_STEPS[args.vlsm]
    card = pretrain(PretrainConfig(vlsm=args.vlsm, steps=steps, seed=args.seed), args.out)
    print(json.dumps(card["zero_shot_heldout"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
