"""Pretrain the mini VLSMs on the synthetic referring-segmentation corpus (`make pretrain-mini`).

The mini models are the real architectures at tiny sizes. They are trained end to end (every weight) on
`trainables.mini.corpus` with a fixed seed, then written in each VLSM's own checkpoint format so that they
load through exactly the path real weights take (`from_pretrained` for CLIPSeg). Held-out zero-shot Dice
of the pretrained and of the random-init model goes into the model card.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from trainables.catalog import VLSMS
from trainables.losses import dice_bce_loss
from trainables.metrics import SegMetrics
from trainables.mini.corpus import make_batch
from trainables.tokenizer import clip_tokenizer


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


def _to_tensor(imgs: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


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


def mini_vlsms() -> list[str]:
    """The VLSMs whose catalog card names a mini recipe (`register_vlsm(..., mini="module")`)."""
    return [name for name in VLSMS.names() if VLSMS.get(name).mini]


def recipe(vlsm: str):
    """The VLSM folder's mini module: ARCHITECTURE, STEPS, build(seed), logits(model, x, tokens),
    save(model, out_dir, image_size)."""
    card = VLSMS.get(vlsm)
    if not card.mini:
        raise ValueError(f"no mini configuration for VLSM {vlsm!r}; allowed: {', '.join(mini_vlsms())}")
    return importlib.import_module(card.mini)


def pretrain(cfg: PretrainConfig, out_dir: str | Path, log=print) -> dict:
    out_dir = Path(out_dir)
    mini = recipe(cfg.vlsm)
    model, arch = mini.build(cfg.seed), mini.ARCHITECTURE
    logits_fn, mean, std = mini.logits, VLSMS.get(cfg.vlsm).mean, VLSMS.get(cfg.vlsm).std
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
    # Each VLSM's own checkpoint format, so the mini models load exactly like real weights; stored in fp16 to
    # keep the committed files small (the 49,408-row CLIP token table dominates).
    mini.save(model, out_dir, cfg.image_size)
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
    ap.add_argument("--vlsm", choices=mini_vlsms(), required=True)
    ap.add_argument("--out", required=True, help="output directory (e.g. models/clipseg-mini)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or recipe(args.vlsm).STEPS
    card = pretrain(PretrainConfig(vlsm=args.vlsm, steps=steps, seed=args.seed), args.out)
    print(json.dumps(card["zero_shot_heldout"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
