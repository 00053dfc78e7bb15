"""One-off conversions from the publishers' downloads to the layouts the readers expect.

- Cityscapes: `gtFine/*_gtFine_labelIds.png` -> one 0/255 mask per present class among the 19 evaluated
  ones, `annotations/{training,validation}/<class>/<city>_<seq>_<frame>.png`, images copied to
  `images/{training,validation}/` (what the original's `binarize_cityscapes.py` produces).
- PASCAL VOC 2012: `SegmentationClass/<id>.png` decoded by exact palette colour -> one mask per present
  class among the 20 (void/boundary and background -> 0), split lists from `ImageSets/Segmentation`.
- BUSI: `<class>/<class> (N).png` + all its `_mask*.png` files OR-merged -> `images/N_<class>.png`,
  `masks/N_<class>.png` (the names in the medvlsm split files).
- The medvlsm split files -> the compact copies shipped in `datasets/splits/`, and the CAMUS train list
  that the stored snapshot lacks, rebuilt by its documented rule.

Every writer is idempotent: outputs are written to a temporary name and renamed, so an interrupted run
leaves no half-written file, and a rerun skips what exists.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from trainables.data.readers import DataError, decode_mask

# (name, labelId) of the 19 Cityscapes classes with ignoreInEval = False; the name is the folder name
# and therefore the prompt ("traffic light.").
CITYSCAPES_CLASSES = (
    ("road", 7), ("sidewalk", 8), ("building", 11), ("wall", 12), ("fence", 13), ("pole", 17),
    ("traffic light", 19), ("traffic sign", 20), ("vegetation", 21), ("terrain", 22), ("sky", 23),
    ("person", 24), ("rider", 25), ("car", 26), ("truck", 27), ("bus", 28), ("train", 31),
    ("motorcycle", 32), ("bicycle", 33),
)
# VOC names as the dataset spells them (index 1..20 in its palette).
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
SPLIT_LONG = {"train": "training", "val": "validation"}


def voc_palette(n: int = 256) -> np.ndarray:
    """The standard VOC colour map: class index bits spread over the high bits of R, G, B."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


# --------------------------------------------------------------------------------------------------
# Small I/O helpers


class Progress:
    """A line on stderr at most every `every` seconds (and at the end): '<label> 120/2975 (4 %)'."""

    def __init__(self, label: str, total: int, stream=None, every: float = 2.0):
        self.label, self.total, self.stream, self.every = label, total, stream or sys.stderr, every
        self._last = time.monotonic()  # first line after `every` seconds: short runs print only the last

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if done == self.total or now - self._last >= self.every:
            self._last = now
            pct = 100 * done // max(self.total, 1)
            print(f"{self.label} {done}/{self.total} ({pct} %)", file=self.stream, flush=True)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_mask(path: Path, mask: np.ndarray) -> None:
    """A {0,1} / bool mask as an 8-bit 0/255 PNG."""
    _atomic_write(path, lambda tmp: Image.fromarray((mask > 0).astype(np.uint8) * 255, "L").save(tmp, "PNG"))


def copy_file(src: Path, dst: Path) -> None:
    _atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def _open_rgb_or_label(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img)
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path} cannot be read ({e}); re-download it") from None


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder {path} not found")
    return path


# --------------------------------------------------------------------------------------------------
# Cityscapes


def prepare_cityscapes(src: str | os.PathLike, dst: str | os.PathLike, splits=("train", "val"),
                       stream=None) -> dict:
    """Binarise `gtFine` labelIds into the layout of the `cityscapes` card; returns sample counts."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    counts: Counter = Counter()
    for split in splits:
        gt_root = _need_dir(src / "gtFine" / split, "Cityscapes gtFine/" + split + " (download gtFine_trainvaltest.zip)")
        img_root = _need_dir(src / "leftImg8bit" / split, "Cityscapes leftImg8bit/" + split
                             + " (download leftImg8bit_trainvaltest.zip)")
        labels = sorted(gt_root.glob("*/*_gtFine_labelIds.png"))
        if not labels:
            raise DataError(f"no *_gtFine_labelIds.png under {gt_root}; is this the gtFine folder?")
        long = SPLIT_LONG[split]
        progress = Progress(f"cityscapes {split}", len(labels), stream)
        for i, label_path in enumerate(labels, 1):
            stem = label_path.name[: -len("_gtFine_labelIds.png")]
            image_src = img_root / label_path.parent.name / f"{stem}_leftImg8bit.png"
            if not image_src.is_file():
                raise DataError(f"image {image_src} for {label_path} not found; unpack leftImg8bit completely")
            outputs = [(name, dst / "annotations" / long / name / f"{stem}.png") for name, _ in CITYSCAPES_CLASSES]
            image_dst = dst / "images" / long / f"{stem}.png"
            done_marker = dst / ".prepared" / long / stem
            if not done_marker.exists():  # a stem is complete only once all its class masks are written
                ids = _open_rgb_or_label(label_path)
                if ids.ndim != 2:
                    raise DataError(f"{label_path} is not a single-channel labelIds image")
                present = set(np.unique(ids).tolist())
                for (name, label_id), (_, out) in zip(CITYSCAPES_CLASSES, outputs):
                    if label_id in present and not out.exists():
                        write_mask(out, ids == label_id)
                if not image_dst.exists():
                    copy_file(image_src, image_dst)
                done_marker.parent.mkdir(parents=True, exist_ok=True)
                done_marker.touch()
            counts[split] += sum(out.exists() for _, out in outputs)
            progress(i)
    return dict(counts)


# --------------------------------------------------------------------------------------------------
# PASCAL VOC 2012


def _voc_root(src: Path) -> Path:
    for cand in (src, src / "VOC2012", src / "VOCdevkit" / "VOC2012"):
        if (cand / "ImageSets" / "Segmentation").is_dir():
            return cand
    raise FileNotFoundError(f"{src} holds no ImageSets/Segmentation; point --src at VOCdevkit/VOC2012 "
                            f"(unpacked VOCtrainval_11-May-2012.tar)")


def voc_class_masks(label: np.ndarray) -> dict[str, np.ndarray]:
    """An RGB VOC label image -> {class name: bool mask} for every present class (exact colour match)."""
    if label.ndim == 2:  # palette indices (PIL mode P read without conversion)
        return {name: label == i for i, name in enumerate(VOC_CLASSES, 1) if (label == i).any()}
    code = (label[..., 0].astype(np.int32) << 16) | (label[..., 1].astype(np.int32) << 8) | label[..., 2]
    pal = voc_palette(21).astype(np.int32)
    out = {}
    for i, name in enumerate(VOC_CLASSES, 1):
        m = code == ((pal[i, 0] << 16) | (pal[i, 1] << 8) | pal[i, 2])
        if m.any():
            out[name] = m
    return out


def prepare_voc(src: str | os.PathLike, dst: str | os.PathLike, splits=("train", "val"), stream=None) -> dict:
    """Binarise VOC 2012 `SegmentationClass` into the layout of the `voc` card; returns sample counts."""
    voc, dst = _voc_root(Path(src).expanduser()), Path(dst).expanduser()
    counts: Counter = Counter()
    for split in splits:
        list_file = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"VOC split list {list_file} not found")
        ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        long = SPLIT_LONG[split]
        progress = Progress(f"voc {split}", len(ids), stream)
        for i, sid in enumerate(ids, 1):
            label_path = voc / "SegmentationClass" / f"{sid}.png"
            image_src = voc / "JPEGImages" / f"{sid}.jpg"
            for p in (label_path, image_src):
                if not p.is_file():
                    raise DataError(f"{p} (listed in {list_file}) not found; unpack the VOC2012 tar completely")
            done_marker = dst / ".prepared" / long / sid
            if not done_marker.exists():
                with Image.open(label_path) as img:
                    label = np.asarray(img.convert("RGB"))  # the original matches RGB colours
                for name, m in voc_class_masks(label).items():
                    out = dst / "annotations" / long / name / f"{sid}.png"
                    if not out.exists():
                        write_mask(out, m)
                image_dst = dst / "images" / long / f"{sid}.jpg"
                if not image_dst.exists():
                    copy_file(image_src, image_dst)
                done_marker.parent.mkdir(parents=True, exist_ok=True)
                done_marker.touch()
            counts[split] += sum((dst / "annotations" / long / n / f"{sid}.png").exists() for n in VOC_CLASSES)
            progress(i)
    return dict(counts)


# --------------------------------------------------------------------------------------------------
# BUSI

_BUSI_IMAGE = re.compile(r"^(benign|malignant|normal) \((\d+)\)\.png$")


def prepare_busi(src: str | os.PathLike, dst: str | os.PathLike, stream=None) -> dict:
    """`Dataset_BUSI_with_GT/<class>/<class> (N).png` + `_mask*.png` -> `images|masks/N_<class>.png`."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if (src / "Dataset_BUSI_with_GT").is_dir():
        src = src / "Dataset_BUSI_with_GT"
    images = sorted(p for p in src.glob("*/*.png") if _BUSI_IMAGE.match(p.name))
    if not images:
        raise FileNotFoundError(f"no '<class> (N).png' images under {src}/{{benign,malignant,normal}}; "
                                f"point --src at Dataset_BUSI_with_GT")
    counts: Counter = Counter()
    progress = Progress("busi", len(images), stream)
    for i, image in enumerate(images, 1):
        cls, num = _BUSI_IMAGE.match(image.name).groups()
        stem = image.name[:-4]
        mask_files = sorted(image.parent.glob(f"{glob_escape(stem)}_mask*.png"))
        if not mask_files:
            raise DataError(f"BUSI image {image} has no '{stem}_mask.png'; the download is incomplete")
        out_name = f"{num}_{cls}.png"
        mask_dst = dst / "masks" / out_name
        if not mask_dst.exists():
            merged = None
            for mf in mask_files:  # 17 images have 2-3 masks (one per lesion): the sample is their union
                m = decode_mask(mf, 127, 1.0)
                if merged is not None and m.shape != merged.shape:
                    raise DataError(f"BUSI mask {mf} is {m.shape} but {mask_files[0]} is {merged.shape}")
                merged = m if merged is None else merged | m
            write_mask(mask_dst, merged)
        if not (dst / "images" / out_name).exists():
            copy_file(image, dst / "images" / out_name)
        counts["multi_mask" if len(mask_files) > 1 else "single_mask"] += 1
        counts[cls] += 1
        progress(i)
    return dict(counts)


def glob_escape(text: str) -> str:
    return re.sub(r"([\[\]\*\?])", r"[\1]", text)


# --------------------------------------------------------------------------------------------------
# Split files


def write_jsonl_gz(path: Path, rows: Iterable[dict]) -> None:
    """Deterministic gzip (mtime 0), so regenerated files are byte-identical."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8"))
    _atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()))


def compact_entry(item: dict) -> dict:
    """Keep what a reader needs: the two file names and every prompt level (bbox etc. are unused)."""
    return {"img_name": item["img_name"], "mask_name": item["mask_name"], "prompts": item["prompts"]}


# medvlsm folder name -> card name
MEDVLSM_FOLDERS = {"kvasir_polyp": "kvasir", "clinicdb_polyp": "clinicdb", "bkai_polyp": "bkai", "isic": "isic",
                   "dfu": "dfu", "busi": "busi", "camus": "camus", "chexlocalize": "chexlocalize"}

CAMUS_STRUCTURES = (  # mask_k: the two p1 sentences of medvlsm for structure k
    (1, "Left ventricular cavity"), (2, "Myocardium"), (3, "Left atrium cavity"),
)


def camus_entries(patients: Iterable[int], views=("2CH", "4CH"), phases=("ED", "ES")) -> list[dict]:
    """The documented CAMUS rule: per patient, view and phase, one entry per structure (mask_1..3).

    Only p0 and p1 can be rebuilt (higher levels need per-patient metadata); TuneVLSeg uses p1.
    """
    rows = []
    for pid in patients:
        for view in views:
            for phase in phases:
                stem = f"patient{pid:04d}_{view}_{phase}"
                for k, structure in CAMUS_STRUCTURES:
                    rows.append({"img_name": f"{stem}.png", "mask_name": f"mask_{k}/{stem}_gt.png",
                                 "prompts": {"p0": "", "p1": [f"{structure} of the heart.",
                                                              f"{structure} in the cardiac ultrasound."]}})
    return rows


_CAMUS_IMAGE = re.compile(r"^patient(\d{4})_(2CH|4CH)_(ED|ES)\.png$")


def camus_entries_from_tree(root: str | os.PathLike, folder: str = "train",
                            patients: Iterable[int] | None = None) -> list[dict]:
    """Apply the rule to a CAMUS tree on disk (`images/<folder>`, `masks/<folder>/mask_{1,2,3}`).

    Every image must have its three masks; `patients` restricts to those ids (e.g. 51..450 for train).
    """
    root = Path(root).expanduser()
    image_dir = _need_dir(root / "images" / folder, "CAMUS images")
    wanted = None if patients is None else set(patients)
    found = sorted({int(m.group(1)) for p in image_dir.iterdir() if (m := _CAMUS_IMAGE.match(p.name))})
    pids = [p for p in found if wanted is None or p in wanted]
    if wanted is not None and set(pids) != wanted:
        missing = sorted(wanted - set(pids))
        raise DataError(f"CAMUS patients {missing[:5]}{'...' if len(missing) > 5 else ''} have no images in {image_dir}")
    rows = camus_entries(pids)
    for row in rows:
        for folder_rel, name in ((f"images/{folder}", row["img_name"]), (f"masks/{folder}", row["mask_name"])):
            if not (root / folder_rel / name).is_file():
                raise DataError(f"CAMUS file {root / folder_rel / name} not found; every patient needs 2CH/4CH x "
                                f"ED/ES images and mask_1..3 masks")
    return rows


def compact_medvlsm_splits(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """medvlsm `data/<ds>/anns/*.json` -> `<dst>/<card>/<split>.jsonl.gz`, adding CAMUS train by its rule."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if (src / "data").is_dir():
        src = src / "data"
    written = {}
    for folder, card in MEDVLSM_FOLDERS.items():
        for split in ("train", "val", "test"):
            ann = src / folder / "anns" / f"{split}.json"
            if ann.is_file():
                rows = [compact_entry(e) for e in json.loads(ann.read_text())]
            elif folder == "camus" and split == "train":
                rows = camus_entries(range(51, 451))  # training patients not in val (1-50): 400 x 4 x 3
            else:
                raise FileNotFoundError(f"medvlsm annotation file {ann} not found")
            write_jsonl_gz(dst / card / f"{split}.jsonl.gz", rows)
            written[f"{card}/{split}"] = len(rows)
    return written


PREPARERS = {"cityscapes": prepare_cityscapes, "voc": prepare_voc, "busi": prepare_busi}
