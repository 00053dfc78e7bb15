"""Deterministic synthetic datasets in the medvlsm layout, for tests and the embedded mini benchmark.

Three small downstream sets with a domain shift between them (cards `datasets/mini_*.yaml`):
- `mini_polyp`: bright, specular blobs on reddish tissue texture (RGB), prompt "polyp".
- `mini_skin`: dark irregular lesions on beige skin texture with hairs (RGB), prompt "skin melanoma".
- `mini_echo`: greyscale speckled ultrasound sector with three structures (LV cavity inside a myocardium
  ring, left atrium below), one binary sample per structure like CAMUS, list-valued prompts.
Same seed -> byte-identical files. A few hundred 112 px images take a second or two.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from trainables.data.prepare import write_mask


@dataclass(frozen=True)
class SyntheticSpec:
    name: str
    counts: tuple[int, int, int]  # images in train / val / test (mini_echo gives 3 samples per image)
    size: int = 112


SPECS = {
    "mini_polyp": SyntheticSpec("mini_polyp", (48, 16, 16)),
    "mini_skin": SyntheticSpec("mini_skin", (48, 16, 16)),
    "mini_echo": SyntheticSpec("mini_echo", (16, 6, 6)),
}
ECHO_STRUCTURES = (("lv", "Left ventricular cavity"), ("myo", "Myocardium"), ("la", "Left atrium cavity"))


# --------------------------------------------------------------------------------------------------
# Building blocks


def _value_noise(rng: np.random.Generator, size: int, octaves=(4, 8, 16, 32)) -> np.ndarray:
    """Smooth noise in [0, 1]: random grids at a few scales, bicubically upsampled and summed."""
    out = np.zeros((size, size), np.float32)
    for i, cells in enumerate(octaves):
        grid = rng.random((cells, cells), dtype=np.float32)
        out += cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC) / (2**i)
    out -= out.min()
    return out / max(float(out.max()), 1e-6)


def _blob(rng: np.random.Generator, size: int, radius: float, wobble: float) -> np.ndarray:
    """A bool mask of a star-convex blob: a circle whose radius varies smoothly with the angle."""
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    theta = np.arctan2(yy - cy, xx - cx)
    r = np.full_like(theta, radius)
    for k in (2, 3, 5):
        r += radius * wobble / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(yy - cy, xx - cx) <= r


def _ellipse(size: int, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def _colour(base, noise: np.ndarray, amount: float) -> np.ndarray:
    return np.stack([np.asarray(base[i], np.float32) * (1 - amount + 2 * amount * noise) for i in range(3)], -1)


# --------------------------------------------------------------------------------------------------
# The three generators: (rng, size) -> (image uint8, {structure: bool mask}, prompts per structure)


def polyp_sample(rng: np.random.Generator, size: int):
    tissue = _colour((205, 105, 95), _value_noise(rng, size), 0.25)
    blob = _blob(rng, size, radius=size * rng.uniform(0.12, 0.25), wobble=0.25)
    shade = _value_noise(rng, size, (2, 4))
    polyp = _colour((235, 150, 130), shade, 0.15)
    soft = cv2.GaussianBlur(blob.astype(np.float32), (5, 5), 0)[..., None]
    img = tissue * (1 - soft) + polyp * soft
    highlight = (_value_noise(rng, size, (16, 32)) > 0.93) & blob  # specular reflections on the dome
    img[highlight] = 250
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    area = "large" if blob.mean() > 0.12 else "small"
    return img, {"polyp": blob}, {"polyp": {"p0": "", "p1": "polyp", "p2": f"one {area} pink polyp"}}


def skin_sample(rng: np.random.Generator, size: int):
    skin = _colour((225, 185, 155), _value_noise(rng, size, (8, 16, 32)), 0.08)
    lesion = _blob(rng, size, radius=size * rng.uniform(0.15, 0.28), wobble=0.45)
    dots = _value_noise(rng, size, (8, 16))
    dark = _colour((95, 60, 45), dots, 0.35)
    soft = cv2.GaussianBlur(lesion.astype(np.float32), (3, 3), 0)[..., None]
    img = skin * (1 - soft) + dark * soft
    for _ in range(int(rng.integers(2, 6))):  # hairs cross lesion and skin alike (not part of the mask)
        p0, p1 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(img, tuple(int(v) for v in p0), tuple(int(v) for v in p1), (60, 45, 40), 1)
    yy, xx = np.mgrid[:size, :size] / (size / 2) - 1
    img *= np.clip(1.15 - 0.35 * (xx**2 + yy**2), 0.5, 1)[..., None]  # dermoscope vignette
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    return img, {"lesion": lesion}, {"lesion": {"p0": "", "p1": "skin melanoma", "p2": "dark skin melanoma"}}


def echo_sample(rng: np.random.Generator, size: int):
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    apex_y, apex_x = -0.05 * size, size / 2
    angle = np.arctan2(xx - apex_x, yy - apex_y)
    depth = np.hypot(xx - apex_x, yy - apex_y)
    sector = (np.abs(angle) < np.deg2rad(38)) & (depth < 1.05 * size)
    cy, cx = size * rng.uniform(0.38, 0.46), size * rng.uniform(0.45, 0.55)
    ry, rx, tilt = size * rng.uniform(0.2, 0.26), size * rng.uniform(0.1, 0.14), rng.uniform(-0.25, 0.25)
    wall = size * rng.uniform(0.04, 0.06)
    lv = _ellipse(size, cy, cx, ry, rx, tilt)
    myo = _ellipse(size, cy, cx, ry + wall, rx + wall, tilt) & ~lv
    la = _ellipse(size, cy + ry + wall + size * 0.1, cx, size * 0.09, size * 0.1) & ~myo & ~lv
    tissue = 0.35 + 0.25 * _value_noise(rng, size, (4, 8))
    tissue[myo] = 0.8
    tissue[lv | la] = 0.06
    speckle = rng.rayleigh(0.6, (size, size)).astype(np.float32)  # multiplicative speckle of ultrasound
    img = cv2.GaussianBlur(tissue, (3, 3), 0) * speckle * np.clip(1.2 - depth / (1.5 * size), 0.3, 1)
    img = (np.clip(img, 0, 1) * 255 * sector).astype(np.uint8)
    masks = {"lv": lv & sector, "myo": myo & sector, "la": la & sector}
    prompts = {key: {"p0": "", "p1": [f"{text} of the heart.", f"{text} in the synthetic ultrasound."]}
               for key, text in ECHO_STRUCTURES}
    return img, masks, prompts


GENERATORS = {"mini_polyp": polyp_sample, "mini_skin": skin_sample, "mini_echo": echo_sample}


def make_synthetic(name: str, root: str | os.PathLike, seed: int = 0, counts: tuple[int, int, int] | None = None,
                   size: int | None = None) -> Path:
    """Write dataset `name` into `root` (images/, masks/, anns/{train,val,test}.json); returns root.

    A rerun with the same parameters is a no-op (a stamp file records them).
    """
    if name not in SPECS:
        raise ValueError(f"unknown synthetic dataset {name!r}; allowed: {', '.join(SPECS)}")
    spec = SPECS[name]
    counts, size = tuple(counts or spec.counts), int(size or spec.size)
    root = Path(root).expanduser()
    stamp = {"name": name, "seed": seed, "counts": list(counts), "size": size, "version": 1}
    stamp_path = root / ".synthetic.json"
    if stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        return root
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "anns").mkdir(exist_ok=True)
    generate = GENERATORS[name]
    for split_index, (split, n) in enumerate(zip(("train", "val", "test"), counts)):
        rows = []
        for i in range(n):
            rng = np.random.default_rng([seed, split_index, i])
            image, masks, prompts = generate(rng, size)
            stem = f"{split}_{i:04d}"
            Image.fromarray(image).save(root / "images" / f"{stem}.png", "PNG")
            for key, mask in masks.items():
                mask_name = f"{stem}.png" if len(masks) == 1 else f"{stem}_{key}.png"
                write_mask(root / "masks" / mask_name, mask)
                rows.append({"img_name": f"{stem}.png", "mask_name": mask_name, "prompts": prompts[key]})
        (root / "anns" / f"{split}.json").write_text(json.dumps(rows, indent=1))
    stamp_path.write_text(json.dumps(stamp))
    return root


def spec_dict(name: str) -> dict:
    return asdict(SPECS[name])
