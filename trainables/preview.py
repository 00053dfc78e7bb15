"""A trial's picture: a few test images with the ground truth and the final model's prediction overlaid.

Written by the worker next to the tuned-prompt artifact (`artifact/preview.png`), from the model the trial
tested (its best-validation-Dice state), so the MLflow run of every trial shows what it segments. Rows are
test samples spread over the split (the same ones in every trial of a dataset); columns: the image, the
ground truth (green), the prediction (blue), with each sample's Dice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trainables.protocol import PREVIEW_FILE  # noqa: F401 - the file name, re-exported for the trial

_GREEN = np.array([0, 200, 0], dtype=np.float32)
_BLUE = np.array([0, 90, 255], dtype=np.float32)  # reads on the reddish tones of medical images


def sample_indices(n_items: int, n: int) -> list[int]:
    """`n` indices spread evenly over `range(n_items)` (deterministic, so trials of a dataset compare)."""
    if n_items <= 0:
        return []
    n = min(n, n_items)
    return sorted({round(i * (n_items - 1) / max(n - 1, 1)) for i in range(n)})


def _overlay(rgb: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    out = rgb.astype(np.float32).copy()
    out[mask] = 0.45 * out[mask] + 0.55 * colour
    return out.astype(np.uint8)


@torch.no_grad()
def save_preview(model, dataset, device, path: str | Path, n: int = 4, tile: int = 160) -> Path:
    """Write the preview PNG of `n` samples of `dataset` (a test split: uint8 images, 0/1 masks)."""
    from PIL import Image, ImageDraw

    from trainables.batches import device_images, device_tokens

    idx = sample_indices(len(dataset), n)
    if not idx:
        raise ValueError("the dataset is empty")
    samples = [dataset[i] for i in idx]
    images = torch.stack([s["image"] for s in samples])
    was_training = model.training
    model.eval()
    try:
        logits = model(device_images(images, device, model.spec.mean, model.spec.std),
                       **device_tokens(model, [s["prompt"] for s in samples], device))
    finally:
        model.train(was_training)
    pred = (torch.sigmoid(logits.float()) >= 0.5).cpu().numpy()[:, 0]
    head = 18
    sheet = Image.new("RGB", (3 * tile, head + len(samples) * tile), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(("image", "ground truth", "prediction")):
        draw.text((c * tile + 4, 3), label, fill="black")
    for r, (s, p) in enumerate(zip(samples, pred)):
        img = s["image"].numpy()
        rgb = img.transpose(1, 2, 0) if img.dtype == np.uint8 else _to_uint8(img)
        gt = s["mask"].numpy()[0] > 0.5
        inter, total = float((gt & p).sum()), float(gt.sum() + p.sum())
        dice = 1.0 if total == 0 else 2 * inter / total
        tiles = (rgb, _overlay(rgb, gt, _GREEN), _overlay(rgb, p, _BLUE))
        for c, t in enumerate(tiles):
            sheet.paste(Image.fromarray(t).resize((tile, tile), Image.BILINEAR), (c * tile, head + r * tile))
        draw.text((2 * tile + 4, head + r * tile + 3), f"Dice {dice:.2f}", fill="yellow")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def _to_uint8(chw: np.ndarray) -> np.ndarray:
    """A normalised float image back to displayable uint8 (min-max per image)."""
    hwc = chw.transpose(1, 2, 0)
    lo, hi = float(hwc.min()), float(hwc.max())
    return ((hwc - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)
