"""Augmented training samples per second per CPU core at 352 px: uncached vs the in-memory cache vs cached
uint8 samples, side by side.

    .venv/bin/python benchmarks/data_pipeline.py [--root DIR] [--seconds 5] [--workers 2] [--step-rate 1500]

Data: real Kvasir-SEG JPEGs (`../shared/data/kvasir_seg_mini`, 64 images of ~620x530, when present, or
`--root` with the kvasir layout), else synthetic 620x530 JPEGs written to a temporary folder. The train
split is read through `trainables.data.build_dataset` with the paper's augmentation:

    uncached   every sample is decoded (PIL) and resized (bicubic) again, then augmented and normalised:
               float32 samples
    cached     decoded + resized once (`SegmentationDataset.preload`, the process-wide CACHE), then only
               the random augmentation + normalisation run per sample: float32 samples
    uint8      cached, augmentation only (`normalize=False`): uint8 samples, normalised later on the
               device by `trainables.batches.forward_batch` — what a trial does

One process with one thread (torch, OpenCV) = per-core figures, with the bytes of one sample (image +
mask). A stage breakdown (decode, resize, augment) shows where the time goes, and the cost of the
normalisation that uint8 batches move to the device is shown for the CPU. `--workers N` adds DataLoader
figures with N worker processes and batch 32 (`trainables.batches.collate`; workers inherit the preloaded
cache by fork) for uncached, cached float32 and cached uint8 batches. `--step-rate R` (images/s of the GPU
step, from benchmarks/gpu_step.py) prints how many cores keep such a step fed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KVASIR_MINI = Path(__file__).resolve().parents[2] / "shared" / "data/kvasir_seg_mini"


def synthetic_kvasir(root: Path, n: int = 48, size=(530, 620)) -> Path:
    """n JPEG image/mask pairs at a Kvasir-like size, in the medvlsm layout with its own anns/."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    entries = []
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        base = rng.integers(60, 200, size=3)
        noise = rng.normal(0, 25, size=(-(-h // 8), -(-w // 8), 3))  # ceil: the kron covers h x w
        texture = np.kron(noise, np.ones((8, 8, 1)))[:h, :w]
        img = np.clip(base + texture + rng.normal(0, 8, size=(h, w, 3)), 0, 255).astype(np.uint8)
        cy, cx, r = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4), rng.integers(40, 140)
        mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2).astype(np.uint8) * 255
        name = f"syn{i:04d}.jpg"
        Image.fromarray(img).save(root / "images" / name, quality=90)
        Image.fromarray(mask).save(root / "masks" / name, quality=90)
        entries.append({"img_name": name, "mask_name": name, "prompts": {"p1": "polyp"}})
    (root / "anns").mkdir()
    for split in ("train", "val", "test"):
        (root / "anns" / f"{split}.json").write_text(json.dumps(entries))
    return root


def one_thread() -> None:
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def rate(ds, seconds: float, min_samples: int) -> float:
    """Samples per second of `ds[i]` in a loop over the dataset for at least `seconds`."""
    n, i, t0 = 0, 0, time.perf_counter()
    while True:
        ds[i % len(ds)]
        n += 1
        i += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and n >= min_samples:
            return n / elapsed


def stages(ds, ds_uint8, count: int) -> dict[str, float]:
    """Milliseconds per sample of each stage, on the first `count` samples."""
    import numpy as np

    from trainables.data import transforms as T
    from trainables.data.readers import decode_image, decode_mask

    out = {"decode image (PIL)": 0.0, "decode mask (PIL)": 0.0, "resize (cv2 bicubic/nearest)": 0.0,
           "augment + normalise (float32)": 0.0, "augment only (uint8)": 0.0}
    card = ds.card
    for i in range(count):
        e = ds.entries[i % len(ds)]
        t0 = time.perf_counter()
        img = decode_image(e.image)
        t1 = time.perf_counter()
        mask = decode_mask(e.mask, card.mask_threshold, card.max_ambiguous_fraction)
        t2 = time.perf_counter()
        T.resize_image(img, ds.image_size), T.resize_mask(mask, ds.image_size)
        t3 = time.perf_counter()
        for k, dt in zip(out, (t1 - t0, t2 - t1, t3 - t2)):
            out[k] += dt * 1e3 / count
    # Augmentation timed in its own loop, as a cached dataset runs it: between decodes the CPU caches are
    # cold, which hides most of the float32/uint8 difference.
    cached = [ds.load(i % len(ds)) for i in range(min(count, len(ds)))]
    variants = (("augment + normalise (float32)", ds, np.float32), ("augment only (uint8)", ds_uint8, np.uint8))
    for key, d, dtype in variants:
        t0 = time.perf_counter()
        for image, small_mask, _ in cached:
            o = d._pipeline(image=image, mask=small_mask)
            T.to_chw(o["image"], o["mask"], dtype)
        out[key] = (time.perf_counter() - t0) * 1e3 / len(cached)
    return out


def sample_bytes(ds) -> int:
    s = ds[0]
    return s["image"].nbytes + s["mask"].nbytes


def device_normalise_ms(ds_uint8, batch: int = 32, repeats: int = 20) -> float:
    """Milliseconds to normalise a uint8 batch with `trainables.batches.device_images` on this CPU."""
    import torch

    from trainables.batches import collate, device_images
    from trainables.data import IMAGENET_MEAN, IMAGENET_STD

    images = collate([ds_uint8[i % len(ds_uint8)] for i in range(batch)])["image"]
    cpu = torch.device("cpu")
    device_images(images, cpu, IMAGENET_MEAN, IMAGENET_STD)  # statistics made once, as in a trial
    t0 = time.perf_counter()
    for _ in range(repeats):
        device_images(images, cpu, IMAGENET_MEAN, IMAGENET_STD)
    return (time.perf_counter() - t0) * 1e3 / repeats


def loader_rate(ds, workers: int, seconds: float, batch: int = 32) -> float:
    import torch

    from trainables.batches import collate

    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         collate_fn=collate, persistent_workers=True, drop_last=False)
    it = iter(loader)
    next(it)  # start-up of the workers is not throughput
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        n += len(b["mask"])
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", help="a Kvasir-layout dataset root (default: kvasir_seg_mini, else synthetic)")
    ap.add_argument("--image-size", type=int, default=352)
    ap.add_argument("--seconds", type=float, default=4.0, help="measuring time per figure")
    ap.add_argument("--workers", type=int, nargs="*", default=[], help="also DataLoader figures, e.g. 2 4")
    ap.add_argument("--step-rate", type=float, default=None, help="GPU step images/s to feed")
    args = ap.parse_args()
    one_thread()

    from trainables.data import CACHE, IMAGENET_MEAN, IMAGENET_STD, build_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else KVASIR_MINI
        source = f"real Kvasir-SEG JPEGs ({root})"
        if not root.is_dir():
            source = f"synthetic 620x530 JPEGs ({root} not found)"
            root = synthetic_kvasir(Path(tmp) / "kvasir")

        def make(cache: bool, normalize: bool = True):
            return build_dataset("kvasir", root, "train", args.image_size, IMAGENET_MEAN, IMAGENET_STD,
                                 augment=True, cache=cache, normalize=normalize)

        uncached = make(cache=False)
        CACHE.clear()
        cached = make(cache=True)
        t0 = time.perf_counter()
        cached.preload()
        preload_s = time.perf_counter() - t0
        uint8 = make(cache=True, normalize=False)  # same cache keys: already filled
        n = len(cached)
        r_unc = rate(uncached, args.seconds, n)
        r_cac = rate(cached, args.seconds, n)
        r_u8 = rate(uint8, args.seconds, n)
        st = stages(cached, uint8, min(n, 32))
        b_float, b_u8 = sample_bytes(cached), sample_bytes(uint8)

        print(f"{source}: train split, {n} samples, {args.image_size}px, paper augmentation; 1 process, 1 thread")
        print(f"{'':40}{'samples/s/core':>15}{'ms/sample':>11}{'ratio':>7}{'bytes/sample':>14}")
        for label, r, b in (("uncached float32 (decode+resize+aug+norm)", r_unc, b_float),
                            ("cached float32 (augment + normalise)", r_cac, b_float),
                            ("cached uint8 (augment only)", r_u8, b_u8)):
            print(f"{label:40}{r:>15.1f}{1e3 / r:>11.2f}{r / r_unc:>7.2f}{b:>14,}")
        print(f"cache fill (decode + resize all {n} once): {preload_s:.2f} s, {CACHE.nbytes / 2**20:.1f} MiB "
              f"({CACHE.nbytes / max(n, 1) / 2**10:.0f} KiB per sample)")
        print("stage breakdown (ms per sample):")
        for k, v in st.items():
            print(f"  {k:<32}{v:>8.2f}")
        norm_ms = device_normalise_ms(uint8)
        print(f"normalising a uint8 batch of 32 on the device (here this CPU, 1 thread): {norm_ms:.2f} ms "
              f"({norm_ms / 32:.3f} ms per sample)")
        if args.workers:
            print(f"DataLoader, batch 32, cached unless said ({os.cpu_count()} cores on this machine):")
            for w in args.workers:
                ru = loader_rate(uncached, w, args.seconds)
                rc = loader_rate(cached, w, args.seconds)
                r8 = loader_rate(uint8, w, args.seconds)
                print(f"  {w} workers: uncached float32 {ru:8.1f}   float32 {rc:8.1f}   uint8 {r8:8.1f} images/s"
                      f"   uint8 / float32 {r8 / rc:.2f}")
        rates = [args.step_rate] if args.step_rate else [500.0, 1000.0, 2000.0]
        print("cores needed to feed a GPU step of R images/s (uint8 / cached float32 / uncached): "
              + "; ".join(f"R={r:g}: {r / r_u8:.1f} / {r / r_cac:.1f} / {r / r_unc:.1f}" for r in rates))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
