"""Overhead of the trial loop: train images/s of `trainables.trial.fit` vs a bare forward/backward loop.

Both run the same model (CLIPSeg + a learner), the same batch size and precision, in one process, on
in-memory synthetic data, so the ratio is the loop's own cost (tokenisation, metrics, checkpointing,
accumulation bookkeeping). Prints a side-by-side table.

    python benchmarks/trial_loop.py [--config tiny|clipseg-rd64] [--learner vpt] [--batch 8] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny", help="shipped CLIPSeg config (tiny, clipseg-rd64) or --weights")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--learner", default="vpt")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()

    from trainables.losses import dice_bce_loss
    from trainables.model import ModelConfig, build_model
    from trainables.trial import DataConfig, TrainConfig, TrialConfig, fit, resolve_device, resolve_precision

    mcfg = ModelConfig(vlsm="clipseg", weights=args.weights, vlsm_config=None if args.weights else args.config,
                       learner=args.learner)
    model = build_model(mcfg)
    S = model.spec.image_size
    n = args.batch * args.steps
    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.randn(3, S, S, generator=g), "mask": (torch.rand(1, S, S, generator=g) > 0.7).float(),
              "prompt": "polyp.", "original_size": (S, S), "index": i} for i in range(n)]
    data = {"train": items, "val": items[: args.batch], "test": items[: args.batch]}
    train = TrainConfig(batch_size=args.batch, effective_batch_size=args.batch, max_epochs=2, min_epochs=0,
                        precision=args.precision, eval_original_size=False, save_artifact=False)
    device = resolve_device(train)
    amp_dtype, _ = resolve_precision(train, device)
    model.to(device)

    # Bare loop: the same model, forward + loss + backward + AdamW, nothing else.
    opt = torch.optim.AdamW(model.param_groups(1e-4), lr=1e-4)
    # The forward `fit` runs: the batch's one distinct prompt encoded once (text_index).
    tokens = {k: v.to(device) for k, v in model.tokenize_batch(["polyp."] * args.batch).items()}
    # The same distinct batches `fit` sees, stacked beforehand: reusing one batch would be cache-hot on a CPU
    # and flatter the bare loop.
    batches = [(torch.stack([it["image"] for it in items[i : i + args.batch]]).to(device),
                torch.stack([it["mask"] for it in items[i : i + args.batch]]).to(device))
               for i in range(0, n, args.batch)]
    model.train()
    for i in range(args.steps + 2):
        if i == 2:  # two warm-up steps
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        x, y = batches[i % len(batches)]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = dice_bce_loss(model(x, **tokens), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    bare = args.batch * args.steps / (time.perf_counter() - t0)

    reports = []
    cfg = TrialConfig(model=mcfg, data=DataConfig(dataset="synthetic", root="/none"), train=train)
    fit(cfg, lambda m, d: reports.append(m), model=model, datasets=data)
    loop = reports[1]["images_per_s"]  # epoch 2: warm
    print(f"device {device}  precision {amp_dtype or 'fp32'}  model {args.weights or args.config}  learner {args.learner}  "
          f"batch {args.batch}  image {S}px")
    print(f"{'':24s}{'images/s':>10s}{'ratio':>8s}")
    print(f"{'bare fwd/bwd loop':24s}{bare:10.1f}{1.0:8.2f}")
    print(f"{'trainables.trial.fit':24s}{loop:10.1f}{loop / bare:8.2f}")


if __name__ == "__main__":
    main()
