"""A synthetic referring-segmentation corpus for pretraining the mini VLSMs (in the spirit of PhraseCut).

Each sample is a picture of 2–4 flat or textured shapes on a smooth background, a phrase that refers to
some of them ("red circle", "striped square", "the shape on the left", "large blue object") and the
union mask of every object the phrase describes. About 8% of phrases describe nothing in the picture and
have an empty mask, so the model learns to say "not here".

The vocabulary is deliberately small and *not* medical: the mini downstream datasets (polyp-like blobs on
tissue, lesions on skin, nested "ultrasound" structures) are a real domain shift for these models, which is
what makes prompt tuning on them a meaningful question.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (235, 215, 40),
    "purple": (140, 50, 180), "orange": (245, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "ring", "cross", "blob")
TEXTURES = ("plain", "striped", "dotted")
SIDES = ("left", "right", "top", "bottom")


@dataclass
class _Obj:
    shape: str
    colour: str
    texture: str
    mask: np.ndarray  # bool (S, S)
    cy: float
    cx: float
    area: int


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:size, 0:size].astype(np.float32)


def _shape_mask(rng: np.random.Generator, shape: str, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = _grid(size)
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if shape == "triangle":  # apex up
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "ring":
        d2 = dy**2 + dx**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if shape == "cross":
        w = r * 0.35
        return ((np.abs(dy) <= w) & (np.abs(dx) <= r)) | ((np.abs(dx) <= w) & (np.abs(dy) <= r))
    # blob: a circle with a smooth random radius modulation
    ang = np.arctan2(dy, dx)
    k = rng.uniform(0, 2 * np.pi, 3)
    rad = r * (1 + 0.18 * np.sin(2 * ang + k[0]) + 0.12 * np.sin(3 * ang + k[1]) + 0.08 * np.sin(5 * ang + k[2]))
    return dy**2 + dx**2 <= rad**2


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    # Smooth low-frequency colour field: a few random cosines per channel around a random base colour.
    yy, xx = _grid(size)
    base = rng.uniform(60, 190, 3)
    img = np.empty((size, size, 3), np.float32)
    for c in range(3):
        field = np.zeros((size, size), np.float32)
        for _ in range(3):
            f = rng.uniform(0.5, 2.5, 2) * 2 * np.pi / size
            field += np.cos(f[0] * yy + f[1] * xx + rng.uniform(0, 2 * np.pi)) * rng.uniform(5, 25)
        img[..., c] = base[c] + field
    return img


def _paint(rng, img: np.ndarray, mask: np.ndarray, colour: str, texture: str) -> None:
    rgb = np.array(COLOURS[colour], np.float32)
    if texture == "plain":
        img[mask] = rgb
        return
    yy, xx = _grid(img.shape[0])
    if texture == "striped":
        period = rng.integers(4, 7)
        on = ((yy + xx) // period) % 2 == 0
    else:  # dotted
        period = rng.integers(4, 6)
        on = ((yy % period) < 2) & ((xx % period) < 2)
    dark = rgb * 0.35
    img[mask & on] = rgb
    img[mask & ~on] = dark


def _describe(objs: list[_Obj], rng: np.random.Generator, size: int) -> tuple[str, np.ndarray]:
    """Pick a phrase kind and return (phrase, union mask of the objects it refers to)."""
    target = objs[rng.integers(len(objs))]
    kind = rng.choice(["colour_shape", "shape", "colour", "texture_shape", "side", "size", "absent"],
                      p=[0.28, 0.14, 0.14, 0.12, 0.12, 0.12, 0.08])
    if kind == "absent":
        present = {(o.colour, o.shape) for o in objs}
        while True:
            c, s = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            if (c, s) not in present:
                return f"{c} {s}", np.zeros((size, size), bool)
    if kind == "side":
        side = SIDES[rng.integers(4)]
        key = {"left": lambda o: o.cx, "right": lambda o: -o.cx, "top": lambda o: o.cy, "bottom": lambda o: -o.cy}[side]
        pick = min(objs, key=key)
        return f"the shape on the {side}", pick.mask
    if kind == "size":
        big = bool(rng.integers(2))
        pick = max(objs, key=lambda o: o.area) if big else min(objs, key=lambda o: o.area)
        return f"{'large' if big else 'small'} {pick.colour} object", pick.mask
    match = {
        "colour_shape": (lambda o: o.colour == target.colour and o.shape == target.shape, f"{target.colour} {target.shape}"),
        "shape": (lambda o: o.shape == target.shape, f"{target.shape}"),
        "colour": (lambda o: o.colour == target.colour, f"{target.colour} object"),
        "texture_shape": (lambda o: o.texture == target.texture and o.shape == target.shape,
                          f"{target.texture} {target.shape}"),
    }[kind]
    mask = np.zeros((size, size), bool)
    for o in objs:
        if match[0](o):
            mask |= o.mask
    return match[1], mask


def make_sample(rng: np.random.Generator, size: int = 96) -> tuple[np.ndarray, str, np.ndarray]:
    """(image uint8 (S, S, 3), phrase, mask uint8 (S, S) in {0, 1})."""
    img = _background(rng, size)
    objs: list[_Obj] = []
    occupied = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(2, 5))):
        for _attempt in range(10):  # rejection-sample a mostly free spot
            r = rng.uniform(0.08, 0.2) * size
            cy, cx = rng.uniform(r, size - r, 2)
            shape = SHAPES[rng.integers(len(SHAPES))]
            m = _shape_mask(rng, shape, size, cy, cx, r)
            if (m & occupied).sum() < 0.1 * m.sum():
                break
        m &= ~occupied  # later objects never cover earlier ones, so every mask is exactly what is visible
        if m.sum() < 12:
            continue
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        texture = TEXTURES[rng.integers(len(TEXTURES))] if rng.random() < 0.4 else "plain"
        _paint(rng, img, m, colour, texture)
        occupied |= m
        objs.append(_Obj(shape, colour, texture, m, cy, cx, int(m.sum())))
    if not objs:
        return make_sample(rng, size)
    img += rng.normal(0, 4, img.shape)  # mild sensor noise
    phrase, mask = _describe(objs, rng, size)
    return np.clip(img, 0, 255).astype(np.uint8), phrase, mask.astype(np.uint8)


def make_batch(rng: np.random.Generator, n: int, size: int = 96):
    samples = [make_sample(rng, size) for _ in range(n)]
    return (np.stack([s[0] for s in samples]), [s[1] for s in samples], np.stack([s[2] for s in samples]))
