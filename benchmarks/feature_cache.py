"""The frozen-feature cache, side by side: a CoOp (and CoCoOp) trial epoch with and without it.

Real `trainables.trial.fit` epochs (train + validation) on the 64-image real Kvasir sample
(`../shared/data/kvasir_seg_mini`: train 40, val 12; synthetic Kvasir-like JPEGs when it is absent), with a
random-init CLIPSeg rd64 at 352 px (random init: the timing is the architecture's, not the weights').

Rows, per learner:
  off                 data.feature_cache: off, a warm epoch (the second of the trial)
  on, epoch 1 (cold)  the cache's first trial in the worker: every image computed, val/untouched train stored
  on, epoch 2         val all hits; train hits where this draw and an earlier one left the image untouched
  on, next trial      a reused worker's next trial (the cache survives): the steady state of a sweep

The last line is the CoOp speed-up of the steady state (reused worker) over `off`:
    CoOp epoch speed-up with the frozen-feature cache: N.NNx

    python benchmarks/feature_cache.py [--quick] [--device cuda] [--batch 8] [--learners coop cocoop]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KVASIR_MINI = Path(__file__).resolve().parents[2] / "shared" / "data/kvasir_seg_mini"


def _datasets(root: Path, spec, quick: bool, seed: int):
    from trainables.data import build_dataset

    out = {split: build_dataset("kvasir", root, split, spec.image_size, spec.mean, spec.std,
                                augment=split == "train", normalize=False, seed=seed)
           for split in ("train", "val", "test")}
    if quick:  # half the train split: the ratio is the same kind of epoch, in half the time
        out["train"].entries = out["train"].entries[:20]
    for d in out.values():
        d.preload()  # decoding is not what is measured
    return out


def _fit(learner: str, setting, args, root: Path, epochs: int) -> list[dict]:
    from trainables.model import build_model
    from trainables.trial import TrialConfig, fit

    cfg = TrialConfig.from_dict({
        "model": {"vlsm": "clipseg", "vlsm_config": args.config, "learner": learner,
                  "learner_config": {"prompt_depth": min(6, args.max_depth)}},
        "data": {"dataset": "kvasir", "root": str(root), "feature_cache": setting},
        "train": {"batch_size": args.batch, "effective_batch_size": 32, "max_epochs": epochs, "min_epochs": 0,
                  "device": args.device, "precision": args.precision, "save_artifact": False,
                  "eval_original_size": False}})
    model = build_model(cfg.model)  # the process keeps the frozen VLSM: the next trial reuses it, as a worker
    reports: list[dict] = []
    fit(cfg, lambda m, d: reports.append(dict(m)), model=model,
        datasets=_datasets(root, model.spec, args.quick, cfg.train.seed))
    args.image_size = model.spec.image_size
    return [r for r in reports if "val_dice" in r and "test_dice" not in r]


def run_learner(learner: str, args, root: Path) -> tuple[list[tuple], float]:
    from trainables import feature_cache

    feature_cache.clear()
    off = _fit(learner, "off", args, root, 2)
    cold = _fit(learner, "auto", args, root, 2)
    steady = _fit(learner, "auto", args, root, 1)
    base = off[-1]["epoch_seconds"]
    rows = [("off (warm epoch)", off[-1]), ("on, epoch 1 (cold, fills)", cold[0]), ("on, epoch 2", cold[1]),
            ("on, next trial (reused worker)", steady[0])]
    table = [(name, r["epoch_seconds"], base / r["epoch_seconds"], r.get("feature_cache_hit_rate"),
              r.get("feature_cache_bytes_per_image"), r.get("feature_cache_mb")) for name, r in rows]
    return table, base / steady[0]["epoch_seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 of the 40 train images (about 5 min on 2 cores)")
    ap.add_argument("--config", default="clipseg-rd64", help="random-init CLIPSeg config (tiny for a smoke run)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--learners", nargs="+", default=["coop", "cocoop"])
    ap.add_argument("--root", type=Path, default=None, help="a Kvasir-layout root (default: kvasir_seg_mini)")
    args = ap.parse_args()
    args.max_depth = 6 if args.config != "tiny" else 2  # J = 6 as in the step benchmarks; tiny has 3 layers

    import torch

    root = args.root or KVASIR_MINI
    label = "real Kvasir sample (kvasir_seg_mini)"
    tmp = None
    if not (root / "anns" / "train.json").is_file():
        from data_pipeline import synthetic_kvasir  # noqa: E402 - the sibling benchmark's generator

        tmp = tempfile.TemporaryDirectory()
        root = synthetic_kvasir(Path(tmp.name) / "kvasir", n=64)
        label = "synthetic Kvasir-like JPEGs (kvasir_seg_mini not found)"
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    args.device = "cpu" if device == "auto" else device
    print(f"random-init CLIPSeg {args.config}, batch {args.batch}, device {args.device}, precision "
          f"{args.precision}, torch threads {torch.get_num_threads()}; data: {label}"
          f"{' (train 20 of 40: --quick)' if args.quick else ''}")
    speedups = {}
    for learner in args.learners:
        table, speedups[learner] = run_learner(learner, args, root)
        print(f"\n{learner}: one trial epoch (train + val) at {args.image_size} px")
        print(f"{'':34s}{'seconds':>9s}{'speed-up':>10s}{'hit rate':>10s}{'MB/image':>10s}{'cache MB':>10s}")
        for name, sec, ratio, hit, bpi, mb in table:
            hit_s = "-" if hit is None else f"{hit:.2f}"
            bpi_s = "-" if bpi is None else f"{bpi / 2**20:.2f}"
            mb_s = "-" if mb is None else f"{mb:.0f}"
            print(f"{name:34s}{sec:9.1f}{ratio:9.2f}x{hit_s:>10s}{bpi_s:>10s}{mb_s:>10s}")
    if tmp is not None:
        tmp.cleanup()
    for learner, s in speedups.items():
        if learner != "coop":
            print(f"{learner} epoch speed-up with the frozen-feature cache: {s:.2f}x")
    if "coop" in speedups:
        print(f"CoOp epoch speed-up with the frozen-feature cache: {speedups['coop']:.2f}x")


if __name__ == "__main__":
    main()
