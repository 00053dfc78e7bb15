"""Fixed cost of a trial in a fresh worker process vs the trial's training time, on this machine.

    .venv/bin/python benchmarks/fixed_cost.py [--vlsm clipseg cris] [--learner vpt] [--epochs 8]
        [--no-full-size] [--gpu-images-per-s 1500]

Each VLSM is measured in a fresh Python process (what a trial gets with `reuse_actors: false`), stage by
stage: interpreter start, `import torch`, the trial's own imports (trainables.trial, transformers, ray),
building the model from the embedded mini checkpoint (`models/clipseg-mini`, `models/cris-mini`) and once
more as the next trial of a reused worker would (the frozen VLSM is kept in the process), building
the three splits of a mini dataset cold (decode + resize every file) and again warm (the process-wide
cache: what a reused worker or a node-level cache gives the next trial), then `trainables.trial.fit` with the
mini benchmark's settings. Fixed cost = everything before the first epoch; the fraction is fixed / total.

`--full-size` (default on) also loads a full-size random-init CLIPSeg rd64 checkpoint (150 M parameters,
saved to a temporary folder first) in the fresh process: the real weights' load cost, which the mini models
understate. `--gpu-images-per-s R` projects the fraction for a Kvasir-sized trial (800 train + 100 val
images, 20 epochs) whose step runs at R images/s, with this machine's fixed cost.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MINI_WEIGHTS = {"clipseg": REPO / "models" / "clipseg-mini", "cris": REPO / "models" / "cris-mini"}


def child(cfg: dict) -> None:
    """Runs in the fresh process; prints one JSON line of stage timestamps (time.time())."""
    marks = {"started": time.time()}
    import torch

    marks["import torch"] = time.time()
    import ray  # noqa: F401  (a Ray worker imports it before the trainable runs)
    import transformers  # noqa: F401

    from trainables.model import build_model
    from trainables.trial import TrialConfig, build_datasets, fit

    marks["import trainables, transformers, ray"] = time.time()
    torch.set_num_threads(cfg["threads"])
    if cfg.get("full_size"):
        from transformers import CLIPSegForImageSegmentation

        CLIPSegForImageSegmentation.from_pretrained(cfg["full_size"], dtype=torch.float32)
        marks["load full-size CLIPSeg rd64 weights"] = time.time()
    tc = TrialConfig.from_dict(cfg["trial"])
    build_model(tc.model)
    marks["build mini model (weights)"] = time.time()
    model = build_model(tc.model)  # what the next trial of a reused worker does: the frozen VLSM is kept
    marks["build again (reused worker)"] = time.time()
    datasets = build_datasets(tc, model.spec)
    for ds in datasets.values():
        ds.preload()
    marks["datasets cold (decode + resize)"] = time.time()
    datasets = build_datasets(tc, model.spec)
    for ds in datasets.values():
        ds.preload()
    marks["datasets warm (cache hits)"] = time.time()
    epochs: list[float] = []
    fit(tc, lambda m, d: epochs.append(m["epoch_seconds"]) if d is not None else None, model=model,
        datasets=datasets)
    marks["fit"] = time.time()
    n_train = len(datasets["train"])
    print("RESULT " + json.dumps({"marks": marks, "epoch_seconds": epochs, "n_train": n_train,
                                  "n_val": len(datasets["val"])}), flush=True)


def trial_config(vlsm: str, learner: str, root: Path, dataset: str, epochs: int) -> dict:
    # The mini benchmark's settings (experiments/mini.yaml), mid-range hyperparameters.
    return {"model": {"vlsm": vlsm, "weights": str(MINI_WEIGHTS[vlsm]), "learner": learner,
                      "learner_config": {"prompt_depth": 3} if learner not in ("coop", "cocoop", "e2e") else {}},
            "data": {"dataset": dataset, "root": str(root / dataset), "num_workers": 0},
            "train": {"max_epochs": epochs, "min_epochs": 2, "batch_size": 8, "effective_batch_size": 8,
                      "early_stop_patience": 100, "lr": 1e-3, "device": "cpu", "save_artifact": False}}


def measure(cfg: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), NO_ALBUMENTATIONS_UPDATE="1")
    t_spawn = time.time()
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True,
                         env=env, cwd=tempfile.gettempdir())
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"child failed:\n{out.stderr[-3000:]}")
    res = json.loads(line[len("RESULT "):])
    res["spawned"] = t_spawn
    return res


def kvasir_decode_ms() -> float | None:
    """Milliseconds to decode + resize one real Kvasir-SEG sample at 352 px (kvasir_seg_mini), else None."""
    root = Path(__file__).resolve().parents[2] / "shared" / "data/kvasir_seg_mini"
    if not root.is_dir():
        return None
    from trainables.data import CACHE, IMAGENET_MEAN, IMAGENET_STD, build_dataset

    CACHE.clear()
    t0, n = time.perf_counter(), 0
    for split in ("train", "val", "test"):
        ds = build_dataset("kvasir", root, split, 352, IMAGENET_MEAN, IMAGENET_STD).preload()
        n += len(ds)
    CACHE.clear()
    return (time.perf_counter() - t0) * 1e3 / n


def report(name: str, res: dict, gpu_rate: float | None, kvasir_ms: float | None = None) -> None:
    marks = res["marks"]
    names = list(marks)
    rows = [("python start", marks["started"] - res["spawned"])]
    rows += [(b, marks[b] - marks[a]) for a, b in zip(names, names[1:])]
    t = dict(rows)
    train = sum(res["epoch_seconds"])
    fit_total = t["fit"]
    imports = t["python start"] + t["import torch"] + t["import trainables, transformers, ray"]
    build = t["build mini model (weights)"]
    # Three situations a trial can start in (imports are per process; the data cache is per process today):
    scenarios = {
        "fresh worker, data decoded in the trial": imports + build + t["datasets cold (decode + resize)"],
        "fresh worker, data cached on the node": imports + build + t["datasets warm (cache hits)"],
        "reused worker (reuse_actors), data cached": t["build again (reused worker)"] + t["datasets warm (cache hits)"],
    }
    print(f"\n{name}: fresh process, {res['n_train']} train / {res['n_val']} val samples, "
          f"{len(res['epoch_seconds'])} epochs")
    for k, sec in rows:
        print(f"  {k:<42}{sec:>8.2f} s")
    print(f"  {'training (sum of epoch times)':<42}{train:>8.2f} s   (fit total {fit_total:.2f} s incl. test)")
    print(f"  {'fixed cost':<52}{'s':>6}{'of this trial':>15}")
    for k, fixed in scenarios.items():
        print(f"  {k:<52}{fixed:>6.2f}{fixed / (fixed + fit_total):>15.1%}")
    if gpu_rate:
        kvasir = 20 * (800 + 100) / gpu_rate
        full = t.get("load full-size CLIPSeg rd64 weights")
        extra = (full - build) if full is not None else 0.0  # real weights instead of the mini checkpoint
        what = "full-size weights" if full is not None else "mini weights (without --no-full-size: real ones)"
        cold = t["datasets cold (decode + resize)"]
        if kvasir_ms is not None:  # 1000 real JPEGs instead of the mini set's small PNGs
            cold = 1000 * kvasir_ms / 1e3
            what += f", Kvasir decode {kvasir_ms:.2f} ms/sample x 1000"
        print(f"  Kvasir-sized trial (20 epochs x 900 images) at {gpu_rate:g} images/s: {kvasir:.1f} s of steps; "
              f"with {what}, this machine's fixed cost is:")
        for k, fixed in scenarios.items():
            # a reused worker keeps the frozen VLSM: the real weights' load is not paid again
            f = fixed + (0.0 if "reused" in k else extra) + (cold - t["datasets cold (decode + resize)"] if "decoded" in k else 0.0)
            print(f"    {k:<50}{f:>6.2f} s = {f / (f + kvasir):.1%}")


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.path.insert(0, str(REPO))
        child(json.loads(sys.argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vlsm", nargs="+", default=["clipseg", "cris"])
    ap.add_argument("--learner", default="vpt", help="for CRIS, a text learner is used instead of a vision one")
    ap.add_argument("--dataset", default="mini_polyp")
    ap.add_argument("--data", help="directory holding the mini datasets (default: data/mini, else generated)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-full-size", action="store_true", help="skip the full-size CLIPSeg weight load")
    ap.add_argument("--gpu-images-per-s", type=float, default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else REPO / "data" / "mini"
        if not (data / args.dataset).is_dir():
            from trainables.data import make_synthetic

            data = Path(tmp) / "mini"
            make_synthetic(args.dataset, data / args.dataset)
        full = None
        if not args.no_full_size:
            from transformers import CLIPSegForImageSegmentation

            from trainables.vlsm.clipseg.adapter import _hf_config, load_config_dict

            full = Path(tmp) / "clipseg-rd64"
            CLIPSegForImageSegmentation(_hf_config(load_config_dict("clipseg-rd64"))).save_pretrained(full)
        print(f"machine: {os.cpu_count()} cores, {args.threads} torch threads; dataset {args.dataset} from {data}")
        for vlsm in args.vlsm:
            if not MINI_WEIGHTS[vlsm].exists():
                print(f"\n{vlsm}: {MINI_WEIGHTS[vlsm]} not found, skipped (make pretrain-mini)")
                continue
            learner = args.learner if vlsm == "clipseg" or args.learner in ("coop", "cocoop", "e2e") else "coop"
            cfg = {"trial": trial_config(vlsm, learner, data, args.dataset, args.epochs), "threads": args.threads,
                   "full_size": str(full) if full and vlsm == "clipseg" else None}
            report(f"{vlsm}-mini / {learner}", measure(cfg), args.gpu_images_per_s,
                   kvasir_decode_ms() if args.gpu_images_per_s else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
