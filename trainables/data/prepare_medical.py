"""`data prepare` for the medical sets whose downloads need more than unpacking: BKAI, ClinicDB, ISIC 2016,
DFU 2022 and CheXlocalize. Each writes the medvlsm layout (`images/<img_name>`, `masks/<mask_name>`), with
exactly the files the shipped split files name, so `data check` passes afterwards.

The sources are found by name anywhere under `--src`, so the folder structure of a download (Kaggle or
publisher, zipped into one folder or several) does not matter:

- BKAI-IGH NeoPolyp-Small: `train/<id>.jpeg` images; the colour masks in a `train_gt` folder (red =
  neoplastic, green = non-neoplastic) become one polyp mask, foreground = max(R, G, B) > 127.
- CVC-ClinicDB: `Original/<N>.{tif,png}` and `Ground Truth/<N>.{tif,png}` -> `<N>.png`.
- ISIC 2016 part 1: `ISIC_<id>.jpg` and `ISIC_<id>_Segmentation.png`, training and test folders alike.
- DFU 2022: `<id>.jpg` images, `<id>.png` masks.
- CheXlocalize: the CheXpert images `<split>/<patient>/<study>/<view>.jpg` -> `<patient>_<study>_<view>.jpg`;
  the ground-truth segmentations (`gt_segmentations_{val,test}.json`, COCO run-length encoded per image
  and pathology) -> `<patient>_<study>_<view>_<pathology>.png`, pathology in lower case with `_`.

Masks are written as lossless 0/255 images; where the split files name them `.jpeg` (BKAI), the file keeps
that name and holds PNG data, which image readers detect by content. Every writer is idempotent.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from trainables.data.cards import load_card
from trainables.data.prepare import Progress, _atomic_write, _open_rgb_or_label, copy_file, write_mask
from trainables.data.readers import DataError, decode_mask, read_annotation_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def split_names(card_name: str) -> list[tuple[str, str]]:
    """Distinct (img_name, mask_name) pairs of the card's shipped train/val/test files."""
    card = load_card(card_name)
    pairs = []
    for split in ("train", "val", "test"):
        path = card.shipped_annotation(split)
        if path is None:
            continue
        pairs += [(e["img_name"], e["mask_name"]) for e in read_annotation_file(path)]
    return list(dict.fromkeys(pairs))


class SourceIndex:
    """Every image-like file under `src`, by lower-case stem, split into mask and image files by
    `is_mask(path relative to src)`."""

    def __init__(self, src: Path, is_mask: Callable[[Path], bool]):
        if not src.is_dir():
            raise FileNotFoundError(f"--src {src} is not a directory")
        self.src = src
        self.files: dict[tuple[bool, str], list[Path]] = defaultdict(list)
        for dirpath, _, names in os.walk(src):
            for name in names:
                path = Path(dirpath) / name
                if path.suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                    self.files[(is_mask(path.relative_to(src)), path.stem.lower())].append(path)

    def find(self, name: str, mask: bool) -> Path | None:
        found = self.files.get((mask, Path(name).stem.lower()), [])
        exact = [p for p in found if p.name == name]
        found = exact or found
        if len(found) > 1:
            listing = ", ".join(str(p.relative_to(self.src)) for p in found[:3])
            raise DataError(f"{name}: {len(found)} candidate {'mask' if mask else 'image'} files under {self.src} "
                            f"({listing}); point --src at one copy of the download")
        return found[0] if found else None


def _in_folder(pattern: str) -> Callable[[Path], bool]:
    rx = re.compile(pattern, re.IGNORECASE)
    return lambda path: any(rx.search(part) for part in path.parent.parts)


def _missing_error(card: str, src: Path, missing: list[str], hint: str) -> DataError:
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return DataError(f"{card}: {len(missing)} file(s) named by the split files are not under {src}: "
                     f"{', '.join(missing[:3])}{more}; {hint}")


def _write_image(src: Path, dst: Path) -> None:
    if src.suffix.lower() == dst.suffix.lower():
        copy_file(src, dst)
        return
    # ClinicDB's TIFs become the PNGs the split files name (lossless).
    rgb = _open_rgb_or_label(src)
    _atomic_write(dst, lambda tmp: Image.fromarray(rgb).save(tmp, format=Image.registered_extensions()[dst.suffix.lower()]))


def _write_layout(card: str, dst: Path, todo: list[tuple[Path, str, str, Callable[[], np.ndarray]]],
                  stream=None) -> dict:
    """Write `images/<img_name>` (from an image file) and `masks/<mask_name>` (from a mask maker) for each
    entry of `todo`, skipping files already there."""
    counts: Counter = Counter()
    progress = Progress(card, len(todo), stream)
    for i, (image, img_name, mask_name, make_mask) in enumerate(todo, 1):
        image_dst, mask_dst = dst / "images" / img_name, dst / "masks" / mask_name
        if not image_dst.exists():
            _write_image(image, image_dst)
            counts["images written"] += 1
        if not mask_dst.exists():
            write_mask(mask_dst, make_mask())
            counts["masks written"] += 1
        progress(i)
    counts["samples"] = len(todo)
    return dict(counts)


def _prepare_pairs(card: str, src: str | os.PathLike, dst: str | os.PathLike, is_mask: Callable[[Path], bool],
                   read_mask: Callable[[Path], np.ndarray], hint: str, stream=None) -> dict:
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    index = SourceIndex(src, is_mask)
    todo, missing = [], []
    for img_name, mask_name in split_names(card):
        image, mask = index.find(img_name, mask=False), index.find(mask_name, mask=True)
        missing += [n for n, p in ((img_name, image), (mask_name, mask)) if p is None]
        todo.append((image, img_name, mask_name, partial(read_mask, mask)))
    if missing:
        raise _missing_error(card, src, sorted(set(missing)), hint)
    return _write_layout(card, dst, todo, stream)


def _binary_mask(path: Path) -> np.ndarray:
    return decode_mask(path, 127, 0.05)


def _colour_mask(path: Path) -> np.ndarray:
    """BKAI: red (neoplastic) and green (non-neoplastic) polyps are one foreground; JPEG noise stays below 128."""
    arr = _open_rgb_or_label(path)
    return (arr.max(axis=-1) if arr.ndim == 3 else arr) > 127


def prepare_bkai(src, dst, stream=None) -> dict:
    return _prepare_pairs("bkai", src, dst, _in_folder(r"_gt$|^gt$|mask"), _colour_mask,
                          "point --src at the unpacked Kaggle bkai-igh-neopolyp folder (train/ and train_gt/)",
                          stream)


def prepare_clinicdb(src, dst, stream=None) -> dict:
    return _prepare_pairs("clinicdb", src, dst, _in_folder(r"ground[ _-]?truth|mask"), _binary_mask,
                          "point --src at the CVC-ClinicDB folder holding Original/ and Ground Truth/", stream)


def prepare_isic(src, dst, stream=None) -> dict:
    return _prepare_pairs("isic", src, dst, lambda p: p.stem.endswith("_Segmentation"), _binary_mask,
                          "unpack the ISBI 2016 part 1 training and test data and ground truth under --src", stream)


def prepare_dfu(src, dst, stream=None) -> dict:
    return _prepare_pairs("dfu", src, dst, lambda p: p.suffix.lower() == ".png", _binary_mask,
                          "unpack the DFUC 2022 training images and masks under --src", stream)


# --------------------------------------------------------------------------------------------------
# CheXlocalize: COCO run-length encoding


def rle_counts(text: str) -> list[int]:
    """COCO's compressed RLE string -> run lengths. Each run is a little-endian group of 5-bit digits, one per
    character (value + 48; bit 5 = more digits follow, bit 4 of the last = negative); from the third run
    on, the stored value is the difference to the run two places back."""
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            c = ord(text[pos]) - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos, shift = pos + 1, shift + 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def rle_decode(rle: dict) -> np.ndarray:
    """{"size": [h, w], "counts": str | list} -> (h, w) uint8 {0, 1}; runs alternate 0/1, column-major."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"] if isinstance(rle["counts"], list) else rle_counts(rle["counts"])
    if sum(counts) != h * w:
        raise DataError(f"run-length mask of size {h}x{w} has {sum(counts)} pixels; the file is damaged")
    values = np.zeros(len(counts), np.uint8)
    values[1::2] = 1
    return np.repeat(values, counts).reshape(w, h).T


def pathology_file_part(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


def _chexpert_name(path: Path) -> str:
    """`.../patient64541/study1/view1_frontal.jpg` -> `patient64541_study1_view1_frontal.jpg`."""
    return "_".join([path.parent.parent.name, path.parent.name, path.name])


def prepare_chexlocalize(src, dst, stream=None) -> dict:
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_dir():
        raise FileNotFoundError(f"--src {src} is not a directory")
    segmentations: dict[str, dict] = {}
    jsons = sorted(src.rglob("gt_segmentations_*.json"))
    if not jsons:
        raise FileNotFoundError(f"no gt_segmentations_{{val,test}}.json under {src}; unpack the CheXlocalize "
                                "download there")
    for path in jsons:
        try:
            segmentations.update(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path} is not valid JSON ({e}); re-download it") from None
    images = {}
    for path in src.rglob("*.jpg"):
        if re.fullmatch(r"patient\d+", path.parent.parent.name) and re.fullmatch(r"study\d+", path.parent.name):
            images.setdefault(_chexpert_name(path), path)
    pairs = split_names("chexlocalize")
    masks = {}  # mask_name -> (image id, pathology key in the JSON)
    for cxr_id, by_pathology in segmentations.items():
        for pathology in by_pathology:
            masks[f"{cxr_id}_{pathology_file_part(pathology)}.png"] = (cxr_id, pathology)
    missing = sorted({img for img, _ in pairs if img not in images} | {m for _, m in pairs if m not in masks})
    if missing:
        raise _missing_error("chexlocalize", src, missing,
                             "unpack the CheXpert valid/ and test/ images and the CheXlocalize JSON files under --src")
    todo = [(images[img], img, mask, partial(rle_decode, segmentations[masks[mask][0]][masks[mask][1]]))
            for img, mask in pairs]
    return _write_layout("chexlocalize", dst, todo, stream)


PREPARERS: dict[str, Callable] = {"bkai": prepare_bkai, "clinicdb": prepare_clinicdb, "isic": prepare_isic,
                                  "dfu": prepare_dfu, "chexlocalize": prepare_chexlocalize}
