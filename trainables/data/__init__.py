"""Datasets: data cards (`datasets/*.yaml`), readers for the published layouts, the paper's augmentation.

    from trainables.data import build_dataset, IMAGENET_MEAN, IMAGENET_STD
    ds = build_dataset("kvasir", "/data/kvasir_polyp", "train", 352, IMAGENET_MEAN, IMAGENET_STD)
    ds[0]  # {"image": (3,352,352) float32, "mask": (1,352,352) {0,1}, "prompt": "polyp.", ...}
    # build_dataset(..., normalize=False): uint8 image and mask, normalised by the consumer (trials: on the device)

Names are imported lazily so that torch-free users (`tunevlseg data list`, the cards) start fast.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SPLITS": "cards", "DataCard": "cards", "card_names": "cards", "cards_dir": "cards", "load_card": "cards",
    "SegmentationDataset": "dataset", "build_dataset": "dataset",
    "CACHE": "readers", "DataError": "readers",
    "CLIP_MEAN": "transforms", "CLIP_STD": "transforms", "IMAGENET_MEAN": "transforms", "IMAGENET_STD": "transforms",
    "make_synthetic": "synthetic",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return __all__
