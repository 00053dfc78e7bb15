"""`build_dataset`: a torch Dataset of binary (image, prompt, mask) samples for one split of one card."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from trainables.config import ConfigError
from trainables.data import transforms as T
from trainables.data.cards import DataCard, load_card
from trainables.data.readers import (CACHE, CHECK_HINT, AnnotationSource, DataError, Entry, annotation_source,
                                     decode_image, decode_mask, list_entries, missing_files, prompt_levels)


class SegmentationDataset(Dataset):
    """Samples are dicts: image (3, S, S) float32 normalised, mask (1, S, S) float32 in {0, 1}, prompt str,
    original_size (H, W), name str, and index int (for `original_mask(index)` at evaluation). Decoded and
    resized arrays come from the process-wide CACHE.

    With `normalize=False`, image is (3, S, S) uint8 (after the random augmentation: the pixels Normalize
    would have received) and mask (1, S, S) uint8 in {0, 1}; the consumer normalises, as
    `trainables.batches.forward_batch` does on the device. Everything else, random draws included, is the same.
    """

    def __init__(self, card: DataCard, root: Path, split: str, entries: list[Entry], image_size: int,
                 mean, std, augment: bool, cache: bool = True, seed: int | None = None, source: str = "",
                 normalize: bool = True, grey_masks: bool = False, resize: str = T.DEFAULT_RESIZE):
        self.card, self.root, self.split, self.entries = card, root, split, entries
        # grey_masks: samples carry the mask's grey values 0..255 (resized nearest), not {0, 1}; for the
        # original's targets (`data.mask_target: original` in trainables/trial.py).
        self.grey_masks = grey_masks
        self.image_size, self.augment, self.cache, self.seed, self.source = image_size, augment, cache, seed, source
        self.normalize = normalize
        self.resize = T.check_resize(resize)  # how files become S x S (transforms.RESIZES); part of the cache keys
        # List-valued prompts (CAMUS) are drawn at random for training only; evaluation uses the first one
        # so that val/test scores are deterministic (the original re-drew them at val/test too).
        self.random_prompts = split == "train"
        self._pipeline = T.augmentation(mean, std, train=augment, normalize=normalize)
        # The epoch lives in shared memory so that persistent DataLoader workers (forked once) see
        # `set_epoch` from the trial's process.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def prompts(self) -> list[str]:
        """The evaluation prompt of every sample (first of a list)."""
        return [e.prompts[0] for e in self.entries]

    # --- decoding (cached) -----------------------------------------------------------------------------
    def _image(self, path: Path) -> tuple[np.ndarray, tuple[int, int]]:
        key = CACHE.key(path, "image", self.image_size, self.resize) if self.cache else None
        hit = CACHE.get(key) if key else None
        if hit is not None:
            return hit
        full = decode_image(path)
        small = T.resize_image(full, self.image_size, self.resize)
        value = (small, full.shape[:2])
        if key:
            CACHE.put(key, value, small.nbytes)
        return value

    def _mask(self, path: Path) -> tuple[np.ndarray, tuple[int, int]]:
        threshold = None if self.grey_masks else self.card.mask_threshold
        key = CACHE.key(path, "mask", self.image_size, threshold, self.resize) if self.cache else None
        hit = CACHE.get(key) if key else None
        if hit is not None and self.grey_masks:
            return hit
        if hit is not None:
            packed, hw = hit
            return np.unpackbits(packed, count=self.image_size**2).reshape(self.image_size, self.image_size), hw
        full = decode_mask(path, threshold, self.card.max_ambiguous_fraction)
        small = np.ascontiguousarray(T.resize_mask(full, self.image_size, self.resize))
        if key and self.grey_masks:
            CACHE.put(key, (small, full.shape), small.nbytes)
        elif key:  # masks are {0,1}: bit-packing makes a 352 px mask 15 kB instead of 124 kB
            packed = np.packbits(small)
            CACHE.put(key, (packed, full.shape), packed.nbytes)
        return small, full.shape

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """Resized uint8 image (S, S, 3), {0,1} mask (S, S) and the original (H, W) of sample `index`."""
        e = self.entries[index]
        try:
            image, hw = self._image(e.image)
            mask, mask_hw = self._mask(e.mask)
            if tuple(hw) != tuple(mask_hw):
                raise DataError(f"mask {e.mask} is {mask_hw[1]}x{mask_hw[0]} (WxH) but its image {e.image} is "
                                f"{hw[1]}x{hw[0]}; masks must have their image's size")
        except DataError as err:
            raise DataError(f"{self.card.name} {self.split} sample {index} ({e.name}): {err}; "
                            + CHECK_HINT.format(name=self.card.name, root=self.root)) from None
        return image, mask, (int(hw[0]), int(hw[1]))

    def original_mask(self, index: int) -> np.ndarray:
        """The {0,1} mask at the original resolution (for metrics at original size; not cached)."""
        card = self.card
        return decode_mask(self.entries[index].mask, card.mask_threshold, card.max_ambiguous_fraction)

    def preload(self) -> "SegmentationDataset":
        """Decode everything now (e.g. before forking DataLoader workers, which share the parent's cache)."""
        for i in range(len(self)):
            self.load(i)
        return self

    # --- sampling ----------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Random draws (augmentation, list-valued prompts) are a function of (seed, epoch, sample index)
        alone: the same whichever worker loads a sample and however many there are, and the same when a
        trial resumes at this epoch in a new process."""
        self._epoch[0] = int(epoch)

    def _draw_streams(self, index: int) -> tuple[np.random.Generator, random.Random, random.Random]:
        """Three independent streams of sample `index` in this epoch: numpy and Python generators that the
        whole augmentation pipeline shares, and the prompt choice's own. Children of one SeedSequence
        (seed, epoch, index), so a pure function of those three."""
        root = np.random.SeedSequence([(self.seed or 0) % 2**32, int(self._epoch[0]), index])
        numpy_seq, python_seq, prompt_seq = root.spawn(3)
        return (np.random.default_rng(numpy_seq), random.Random(int(python_seq.generate_state(1, np.uint64)[0])),
                random.Random(int(prompt_seq.generate_state(1, np.uint64)[0])))

    def __getitem__(self, index: int) -> dict:
        image, mask, hw = self.load(index)
        prompts = self.entries[index].prompts
        prompt = prompts[0]
        random_prompt = self.random_prompts and len(prompts) > 1
        if self.augment or random_prompt:
            numpy_rng, python_rng, prompt_rng = self._draw_streams(index)
            # One pair of generators for the whole pipeline: each transform draws its "does it fire" and its
            # parameters after the one before it, from the same stream. (Compose.set_random_seed(seed) would
            # give every transform its own generator seeded with the same integer: identical streams, so
            # Affine and RandomBrightnessContrast fired together with tied parameters; issue #23.)
            self._pipeline.set_random_state(numpy_rng, python_rng)
            if random_prompt:
                prompt = prompt_rng.choice(prompts)
        out = self._pipeline(image=image, mask=mask)
        image_chw, mask_chw = T.to_chw(out["image"], out["mask"], np.float32 if self.normalize else np.uint8)
        # The frozen-feature cache may reuse the image features of a sample whose pixels are those of the
        # resized file: always at val/test, and for the train draws that left them untouched (checked on
        # the pixels themselves, whichever transform did or did not fire).
        untouched = not self.augment or (not self.normalize and np.array_equal(out["image"], image))
        return {"image": torch.from_numpy(image_chw), "mask": torch.from_numpy(mask_chw), "prompt": prompt,
                "original_size": hw, "name": self.entries[index].name, "index": index,
                "image_id": self._image_id(index) if untouched else ""}

    def _image_id(self, index: int) -> str:
        """The frozen-feature cache's key of sample `index`'s resized pixels: file, size and (when not the
        default, whose ids stay as they were) the resize, so that two resizes of one file never share features."""
        suffix = "" if self.resize == T.DEFAULT_RESIZE else f"/{self.resize}"
        return f"{self.entries[index].image}@{self.image_size}{suffix}"

    def __repr__(self) -> str:
        return (f"SegmentationDataset({self.card.name}, {self.split}, n={len(self)}, size={self.image_size}, "
                f"augment={self.augment}, normalize={self.normalize}, resize={self.resize}, source={self.source})")


def build_dataset(card: str | os.PathLike | DataCard, root: str | os.PathLike, split: str, image_size: int,
                  mean, std, augment: bool | None = None, cache: bool = True,
                  annotations: AnnotationSource = "auto", seed: int | None = None,
                  normalize: bool = True, grey_masks: bool = False, resize: str = T.DEFAULT_RESIZE,
                  prompt_level: str | None = None, prompt_full_stop: bool = True) -> SegmentationDataset:
    """One split of a dataset on disk, checked for structure and missing files before any decoding.

    `card`: a card name (`kvasir`) or a path to a card YAML. `augment` defaults to True for train only.
    `annotations`: "auto" uses `<root>/anns/<split>.json` when present, else the card's shipped split.
    `normalize=False`: uint8 image and mask samples, normalised later by the consumer (see the class).
    `resize`: how files become S x S (`transforms.RESIZES`; `data.resize` of a trial).
    `prompt_level`: read this level of the annotation file's prompts (medvlsm's p0..p9) instead of the
    card's `prompt_key` (p1); `data.prompt_level` of a trial. `prompt_full_stop=False`: the prompts as the
    annotation file writes them (medvlsm's pipeline), not ended with a full stop; medvlsm layout only (an
    image_dir prompt is a folder name, always given one); `data.prompt_full_stop` of a trial.
    """
    card = load_card(card)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    T.check_resize(resize)
    root = Path(root).expanduser().resolve()
    if prompt_level is not None:
        card = with_prompt_level(card, root, split, prompt_level, annotations)
    entries, source = list_entries(card, root, split, annotations, prompt_full_stop)
    missing = missing_files(entries)
    if missing:
        more = f" (and {len(missing) - 1} more missing files)" if len(missing) > 1 else ""
        raise DataError(f"{card.name} {split}: {missing[0]}{more}; lay the files out as docs/data.md describes; "
                        + CHECK_HINT.format(name=card.name, root=root))
    if augment is None:
        augment = split == "train"
    return SegmentationDataset(card, root, split, entries, image_size, mean, std, augment, cache, seed, source,
                               normalize, grey_masks, resize)


def with_prompt_level(card: DataCard, root: Path, split: str, level: str,
                      annotations: AnnotationSource = "auto") -> DataCard:
    """The card reading prompt `level` of `split`'s annotation file; a level some entry lacks is a one-line
    ConfigError naming the field, the dataset, the file and the levels it has."""
    if not isinstance(level, str) or not level:
        raise ConfigError(f"data.prompt_level must be a prompt level such as p1, got {level!r}")
    if card.layout == "image_dir":
        raise ConfigError(f"data.prompt_level: {card.name} has no prompt levels (its prompt is the class name); "
                          f"remove data.prompt_level")
    levels = prompt_levels(card, root, split, annotations)
    if level not in levels:
        where = annotation_source(card, root, split, annotations)
        has = ", ".join(levels) if levels else "none"
        raise ConfigError(f"data.prompt_level: {card.name} {split} has no prompt level {level!r} "
                          f"(levels in every entry of {where}: {has}); pick one of those")
    return dataclasses.replace(card, prompt_key=level)
