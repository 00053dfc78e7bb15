"""The paper's preprocessing (reference §6.3) with albumentations 2.x.

Resize (image bicubic, mask nearest) is deterministic, so it runs once per file and its output is cached
(`data.resize: bilinear_antialias` resizes as medvlsm's main line did instead, see RESIZES);
the random part runs on the cached S x S arrays, in the order of the original pipeline:
  train: Affine(scale ±2 %, translate ±2 %, rotate ±5°, replicate border, p 0.2)
         -> RandomBrightnessContrast(±0.1, by max value, p 0.2) -> Normalize
  (the two random steps fire independently: neither 64 %, one of them 32 %, both 4 % of draws)
  val / test: Normalize
With `normalize=False` the Normalize step is left out and samples stay uint8: a trial sends those across
the DataLoader (a quarter of the bytes) and normalises on the device (`trainables.batches.device_images`).
The original's PadIfNeeded(S, S) and CropNonEmptyMaskIfExists(S, S) are no-ops after an S x S resize and
are left out; its flip was commented out.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import (offline clusters)

from typing import TYPE_CHECKING  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from trainables.catalog import VLSMS  # noqa: E402
from trainables.trial_config import DEFAULT_RESIZE, RESIZES, check_resize  # noqa: E402, F401

if TYPE_CHECKING:
    import albumentations as A

# Normalisation statistics per VLSM family, read from their catalog cards (the VLSM spec carries its own;
# these are for convenience).
IMAGENET_MEAN, IMAGENET_STD = VLSMS.get("clipseg").mean, VLSMS.get("clipseg").std  # CLIPSeg
CLIP_MEAN, CLIP_STD = VLSMS.get("cris").mean, VLSMS.get("cris").std  # CRIS


# How a decoded file becomes S x S (`data.resize`):
# - bicubic: cv2 bicubic image, cv2 nearest mask; what the original's A.Resize(S, S, INTER_CUBIC) does.
# - bilinear_antialias: Pillow's BILINEAR image (antialiased: its filter widens with the downscale factor) and
#   Pillow's NEAREST mask; what torchvision's Resize([S, S]) and Resize([S, S], interpolation=0) do to a PIL
#   image, as medvlsm's main line ran them (configs/experiment/clipseg.yaml @892a836).
# RESIZES and check_resize are the trial config's (torch-free, so `plan` checks the field); re-exported here.


def resize_image(image: np.ndarray, size: int, mode: str = DEFAULT_RESIZE) -> np.ndarray:
    """(H, W, 3) uint8 -> (S, S, 3) uint8, by `mode` (RESIZES). Pillow's result is copied: np.asarray of a PIL
    image is read-only, and torch.from_numpy warns on those."""
    if check_resize(mode) == "bilinear_antialias":
        return np.array(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC)


def resize_mask(mask: np.ndarray, size: int, mode: str = DEFAULT_RESIZE) -> np.ndarray:
    """(H, W) uint8 ({0,1} or grey) -> (S, S), nearest (masks keep their values). cv2's and Pillow's nearest
    pick different source pixels (cv2 floor(x * scale), Pillow the pixel under the output pixel's centre)."""
    if check_resize(mode) == "bilinear_antialias":
        return np.array(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)


def augmentation(mean, std, train: bool, normalize: bool = True) -> A.Compose:
    """The random (train) or deterministic (eval) part of the pipeline, applied after `resize`.

    Unseeded: the caller hands the whole pipeline one pair of generators per sample (`Compose.set_random_state`,
    as `SegmentationDataset` does), so the transforms draw in sequence from one stream, independently of each
    other. Not `Compose(seed=...)` / `set_random_seed`: albumentations 2.x gives every child transform its own
    generator seeded with that same integer, and identical streams make the two transforms fire together with
    tied parameters.

    `normalize=False` leaves out the final Normalize: the output is the uint8 image Normalize would have
    received (Normalize draws no random numbers, so the augmentation draws are the same either way)."""
    # imported here, not at the top: `tunevlseg embeddings` needs resize_image only (albumentations: ~0.7 s)
    import albumentations as A

    steps = []
    if train:
        steps += [
            A.Affine(scale=(0.98, 1.02), translate_percent=(-0.02, 0.02), rotate=(-5, 5),
                     interpolation=cv2.INTER_CUBIC, mask_interpolation=cv2.INTER_NEAREST,
                     border_mode=cv2.BORDER_REPLICATE, p=0.2),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, brightness_by_max=True, p=0.2),
        ]
    if normalize:
        steps.append(A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0))
    return A.Compose(steps)


def to_chw(image: np.ndarray, mask: np.ndarray, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """ToTensorV2(transpose_mask=True) without the tensor: (3, S, S) and (1, S, S) arrays of `dtype`
    (float32 after Normalize, uint8 without it)."""
    if np.dtype(dtype) == np.uint8 and image.dtype != np.uint8:
        # a cast would wrap normalised floats around silently
        raise ValueError(f"to_chw(dtype=uint8) needs a uint8 image (no Normalize), got {image.dtype}")
    return (np.ascontiguousarray(image.transpose(2, 0, 1), dtype=dtype),
            np.ascontiguousarray(mask[None], dtype=dtype))
