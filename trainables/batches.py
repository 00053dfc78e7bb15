"""A collated batch on its way into the model: collate, loaders, device copies, normalisation, tokens.

Shared by the trial loop (`trainables.trial`), the artifact preview (`trainables.preview`), `tunevlseg
predict` and `benchmarks/`: every path feeds the model the same way, so what a benchmark times is what a trial
runs.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import weakref
from typing import Any

import torch


def make_loader(dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int):
    # A generator per loader makes the shuffle order a function of (seed, epoch) — see `set_epoch_seed` —
    # so a resumed trial sees exactly the batches an uninterrupted one would.
    g = torch.Generator()
    g.manual_seed(seed)
    if num_workers > 0 and hasattr(dataset, "preload"):
        # Decode and resize every sample once in this process before workers fork, so they inherit the
        # cache instead of each decoding JPEGs again every epoch.
        dataset.preload()
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False, num_workers=num_workers,
        collate_fn=collate, generator=g, persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def collate(samples: list[dict]) -> dict:
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "mask": torch.stack([s["mask"] for s in samples]),
        "prompt": [s["prompt"] for s in samples],
        "original_size": [tuple(int(v) for v in s["original_size"]) for s in samples],
        "index": [s.get("index", -1) for s in samples],
        "image_id": [s.get("image_id") for s in samples],  # set for un-augmented images (feature cache)
    }


@functools.lru_cache(maxsize=8)
def _pixel_stats(device: torch.device, mean: tuple, std: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per (device, statistics): a fresh tensor every step would be a host->device copy per step.
    mean_255 = torch.tensor(mean, dtype=torch.float32).mul(255).view(1, -1, 1, 1).to(device)
    inv_std_255 = torch.tensor(std, dtype=torch.float32).mul(255).reciprocal().view(1, -1, 1, 1).to(device)
    return mean_255, inv_std_255


def device_images(images: torch.Tensor, device: torch.device, mean, std) -> torch.Tensor:
    """A batch of images on `device`, ready for the model: uint8 (N, 3, S, S) are normalised there as
    albumentations' Normalize does, (x - 255 mean) / (255 std); float batches are taken as already normalised.
    """
    if images.dtype == torch.uint8:
        mean_255, inv_std_255 = _pixel_stats(torch.device(device), tuple(mean), tuple(std))
        # In place on the fresh float copy: one float32 batch allocated instead of three (on CPU, 20 ms
        # instead of 56 ms for 32 x 352 px).
        return to_device(images, device).float().sub_(mean_255).mul_(inv_std_255)
    if not images.is_floating_point():
        raise TypeError(f"batch images must be uint8 (to be normalised) or float (normalised), got {images.dtype}")
    return to_device(images, device)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host->device copy that never makes the host wait: a copy from pageable memory waits for all the
    GPU work queued before it (a hidden sync per step), so CPU tensors are staged in pinned memory first.
    (DataLoader batches are already pinned; PyTorch keeps the pinned block alive until the copy is done.)"""
    if torch.device(device).type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


# Tokenized batches already on the device, per model and (device, prompts): a one-class dataset tokenizes and
# copies once per trial instead of every step. Bounded, as list-valued prompts (CAMUS) make many keys.
_TOKENS: "weakref.WeakKeyDictionary[Any, collections.OrderedDict]" = weakref.WeakKeyDictionary()
_TOKENS_PER_MODEL = 64


def device_tokens(model, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """`model.tokenize_batch(prompts)` on `device` (the distinct prompts and each image's `text_index`)."""
    cache = _TOKENS.setdefault(model, collections.OrderedDict())
    key = (str(device), tuple(prompts))
    tokens = cache.get(key)
    if tokens is None:
        tokens = cache[key] = {k: to_device(v, device) for k, v in model.tokenize_batch(list(prompts)).items()}
        if len(cache) > _TOKENS_PER_MODEL:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return tokens


def forward_batch(model, batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, float mask) of a collated batch; uint8 images are normalised on the device, and the text
    encoder runs once per distinct prompt of the batch (`text_index` maps images to them)."""
    images = device_images(batch["image"], device, model.spec.mean, model.spec.std)
    cache = getattr(model, "feature_cache", None)  # a trainables.feature_cache.Session, set by `fit`
    side = None if cache is None else cache.image_side(model, images, batch.get("image_id"))
    logits = model(images, **device_tokens(model, batch["prompt"], device),
                   **({} if side is None else {"image_side": side}))
    return logits, to_device(batch["mask"], device).float()


def mask_targets(mask: torch.Tensor, mode: str = "binary") -> tuple[torch.Tensor, torch.Tensor]:
    """(loss target, metric target) of a batch's float mask: {0,1} masks serve both; grey 0..255 masks
    (`data.mask_target: original`) give grey / 255 for the loss and grey == 255 for the metrics."""
    if mode == "original":
        return mask / 255, (mask == 255).float()
    return mask, mask


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
