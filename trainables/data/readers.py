"""Readers for the published layouts: annotation lists, image/mask decoding and an in-process cache.

Two layouts cover the ten datasets (the card says which):
- `medvlsm`: `anns/<split>.json` (or the card's shipped copy) lists one entry per (image, class) sample
  with `img_name`, `mask_name` and `prompts`; files live under per-split image/mask folders.
- `image_dir` (Cityscapes, VOC after `prepare`): `<masks>/<class>/<id>.png` per present class, image
  `<images>/<id><suffix>`; the prompt is the class folder name.

Every problem is a `DataError` (a ValueError) whose message names the file and the fix, so a trial that
meets a bad sample fails with that line instead of a traceback deep in a worker.
"""

from __future__ import annotations

import gzip
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Literal

import numpy as np
from PIL import Image

from trainables.data.cards import DataCard

AnnotationSource = Literal["auto", "root", "card"]
CHECK_HINT = "run `tunevlseg data check {name} --root {root}` to list every problem"


class DataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names the file and the fix."""


@dataclass(frozen=True)
class Problem:
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass(frozen=True)
class Entry:
    """One binary sample: an image, the mask of one class in it, and that class's prompt(s)."""

    image: Path
    mask: Path
    prompts: tuple[str, ...]  # several = sampled at train time, first one at evaluation
    name: str  # stable id: the mask path relative to the root
    img_name: str  # as written in the annotation file (used for duplicate / leak reports)


# --------------------------------------------------------------------------------------------------
# Annotation lists


def normalise_prompt(prompt: str) -> str:
    """TuneVLSeg's `insert_stop_at_last`: end every prompt with a full stop."""
    prompt = prompt.rstrip()
    return prompt if prompt.endswith(".") else prompt + "."


def read_annotation_file(path: Path) -> list:
    """A medvlsm JSON list, or our compact gzipped JSON-lines copy of one."""
    try:
        if path.name.endswith(".jsonl.gz"):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                data = [json.loads(line) for line in f if line.strip()]
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"annotation file {path} not found") from None
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"annotation file {path} is not valid JSON ({e}); re-download it") from None
    if not isinstance(data, list):
        raise DataError(f"annotation file {path} must hold a JSON list of entries, got {type(data).__name__}")
    return data


def annotation_source(card: DataCard, root: Path, split: str, source: AnnotationSource = "auto") -> Path:
    """Which annotation file defines `split`: the root's `anns/<split>.json` (auto, root) or the card's copy."""
    src = card.source_split(split)
    local = root / "anns" / f"{src}.json"
    shipped = card.shipped_annotation(split)
    if source in ("auto", "root") and local.is_file():
        return local
    if source in ("auto", "card") and shipped is not None:
        return shipped
    wanted = {"root": str(local), "card": f"a shipped file (card {card.name} ships none for {src})"}.get(
        source, f"{local} (the card ships none for {src})")
    raise DataError(f"{card.name} {split}: no annotation file: expected {wanted}")


def _inside(root: Path, folder: str, rel: object, what: str, ann: Path, index: int) -> Path:
    """root/folder/rel, refusing names that are not plain relative paths inside the root."""
    if not isinstance(rel, str) or not rel.strip():
        raise DataError(f"{ann} entry {index}: `{what}` must be a non-empty string, got {rel!r}")
    parts = PurePosixPath(rel.replace("\\", "/"))
    if parts.is_absolute() or ".." in parts.parts or (len(rel) > 1 and rel[1] == ":"):
        raise DataError(f"{ann} entry {index}: {what} {rel!r} escapes the dataset root; use a path relative "
                        f"to {root / folder} without '..'")
    return root / folder / Path(*parts.parts)


def medvlsm_entries(card: DataCard, root: Path, split: str, ann: Path,
                    full_stop: bool = True) -> tuple[list[Entry], list[Problem]]:
    """Entries of one annotation file; malformed entries become problems (the rest are still read).
    `full_stop=False` keeps the prompts as written (medvlsm's own pipeline), instead of `normalise_prompt`."""
    entries, problems = [], []
    for i, item in enumerate(read_annotation_file(ann)):
        try:
            entries.append(_medvlsm_entry(card, root, split, ann, i, item, full_stop))
        except DataError as e:
            problems.append(Problem(str(ann), str(e).removeprefix(f"{ann} ")))
    return entries, problems


def _medvlsm_entry(card: DataCard, root: Path, split: str, ann: Path, i: int, item: object,
                   full_stop: bool = True) -> Entry:
    if not isinstance(item, dict) or "img_name" not in item or "mask_name" not in item:
        raise DataError(f"{ann} entry {i}: needs `img_name` and `mask_name`, got {str(item)[:80]}")
    prompts = item.get("prompts")
    if not isinstance(prompts, dict) or card.prompt_key not in prompts:
        raise DataError(f"{ann} entry {i} ({item['img_name']}): no prompt {card.prompt_key!r} in `prompts`")
    value = prompts[card.prompt_key]
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise DataError(f"{ann} entry {i}: prompt {card.prompt_key} must be a string or a list of strings")
    image = _inside(root, card.image_dir(split), item["img_name"], "img_name", ann, i)
    mask = _inside(root, card.mask_dir(split), item["mask_name"], "mask_name", ann, i)
    return Entry(image, mask, tuple(normalise_prompt(t) if full_stop else t for t in texts),
                 name=str(PurePosixPath(card.mask_dir(split), item["mask_name"])), img_name=item["img_name"])


def prompt_levels(card: DataCard, root: Path, split: str, source: AnnotationSource = "auto") -> tuple[str, ...]:
    """The prompt levels (medvlsm's p0..p9) every entry of a split's annotation file carries, in file order;
    () for the image_dir layout, whose prompt is the class folder's name."""
    if card.layout == "image_dir":
        return ()
    ann = annotation_source(card, root, split, source)
    common: dict[str, None] | None = None
    for item in read_annotation_file(ann):
        keys = item.get("prompts") if isinstance(item, dict) else None
        keys = dict.fromkeys(keys) if isinstance(keys, dict) else {}
        common = keys if common is None else {k: None for k in common if k in keys}
    return tuple(common or ())


def image_dir_entries(card: DataCard, root: Path, split: str) -> list[Entry]:
    """One entry per `<masks>/<class>/<id>.png` (sorted, so the order does not depend on the filesystem)."""
    mask_root = root / card.mask_dir(split)
    if not mask_root.is_dir():
        raise DataError(f"{card.name} {split}: mask folder {mask_root} not found; run "
                        f"`tunevlseg data prepare {card.name} --src <download> --dst {root}` first")
    image_root = root / card.image_dir(split)
    entries = []
    for class_dir in sorted(p for p in mask_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for mask in sorted(class_dir.glob("*.png")):
            entries.append(Entry(image_root / f"{mask.stem}{card.image_suffix}", mask,
                                 (normalise_prompt(class_dir.name),),
                                 name=str(PurePosixPath(card.mask_dir(split), class_dir.name, mask.name)),
                                 img_name=f"{mask.stem}{card.image_suffix}"))
    return entries


def scan_entries(card: DataCard, root: str | os.PathLike, split: str, source: AnnotationSource = "auto",
                 full_stop: bool = True) -> tuple[list[Entry], str, list[Problem]]:
    """Entries of a split, where they came from, and every structural problem (malformed entry, path
    outside the root, duplicate, empty split). A missing annotation file or folder raises DataError."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} not found; see docs/data.md for how to get {card.title}")
    if card.layout == "image_dir":
        entries, label, problems = image_dir_entries(card, root, split), str(root / card.mask_dir(split)), []
    else:
        ann = annotation_source(card, root, split, source)
        (entries, problems), label = medvlsm_entries(card, root, split, ann, full_stop), str(ann)
    if not entries and not problems:
        problems.append(Problem(label, f"split {split} is empty; check the download and the layout"))
    seen: dict[tuple[Path, Path], int] = {}
    for i, e in enumerate(entries):
        key = (e.image, e.mask)
        if key in seen and e.img_name not in card.known_duplicates:
            problems.append(Problem(label, f"duplicate entry {e.img_name} / {e.name} (entries {seen[key]} and {i}); "
                                           f"remove one"))
        seen.setdefault(key, i)
    return entries, label, problems


def list_entries(card: DataCard, root: str | os.PathLike, split: str, source: AnnotationSource = "auto",
                 full_stop: bool = True) -> tuple[list[Entry], str]:
    """Like `scan_entries`, but the first problem raises DataError (naming how many more there are)."""
    entries, label, problems = scan_entries(card, root, split, source, full_stop)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise DataError(f"{card.name} {split}: {problems[0]}{more}")
    return entries, label


def missing_files(entries: Iterable[Entry]) -> list[Problem]:
    problems, checked = [], set()
    for e in entries:
        for kind, path in (("image", e.image), ("mask", e.mask)):
            if path in checked:
                continue
            checked.add(path)
            if not path.is_file():
                problems.append(Problem(str(path), f"{kind} not found (listed for sample {e.name})"))
    return problems


# --------------------------------------------------------------------------------------------------
# Decoding


def _open(path: Path, kind: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()  # decode now: a truncated file fails here, not later inside a transform
        return img
    except FileNotFoundError:
        raise DataError(f"{kind} {path} not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{kind} {path} cannot be read ({e}); the file is truncated or corrupt: "
                        f"re-download or replace it") from None


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """16-bit (or 32-bit int) grey values -> 8 bit by the top byte, as cv2.imread(IMREAD_COLOR) does."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        return (np.clip(arr, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)  # float images: assume 0..255


def decode_image(path: Path) -> np.ndarray:
    """Any PIL-readable image -> (H, W, 3) uint8 RGB; greyscale is repeated, alpha dropped, 16 bit scaled."""
    img = _open(path, "image")
    if img.mode in ("RGB",):
        return np.asarray(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L", "1"):
        grey = _to_uint8(np.asarray(img))
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"))  # P, RGBA, LA, CMYK, YCbCr ...


def decode_mask(path: Path, threshold: int | None, max_ambiguous: float) -> np.ndarray:
    """A 0/255 mask (any bit depth, grey or colour) -> (H, W) uint8 in {0, 1} via `value > threshold`;
    `threshold=None` returns the grey values 0..255 themselves (checked the same way)."""
    img = _open(path, "mask")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L", "1"):
        grey = _to_uint8(np.asarray(img))
    else:
        grey = np.asarray(img.convert("L"))
    if grey.ndim != 2:
        raise DataError(f"mask {path} has shape {grey.shape}; expected a single-channel image")
    peak = int(grey.max()) if grey.size else 0
    if 0 < peak < 32:
        # 0/1 (or 0..N label id) masks would silently become empty after `> 127`.
        values = np.unique(grey)[:8].tolist()
        raise DataError(f"mask {path} holds values {values}, not 0/255; write foreground as 255 "
                        f"(e.g. mask * 255) or binarise it with `tunevlseg data prepare`")
    ambiguous = float(((grey >= 32) & (grey <= 223)).mean()) if grey.size else 0.0
    if ambiguous > max_ambiguous:
        raise DataError(f"mask {path} is not binary: {ambiguous:.1%} of pixels are between 32 and 223 "
                        f"(allowed {max_ambiguous:.1%}); save it as 0/255 (one mask per class)")
    if threshold is None:
        return np.ascontiguousarray(grey, dtype=np.uint8)
    return (grey > threshold).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# In-process cache of decoded, resized arrays (shared by every dataset object over the same files)


def _cache_limit_bytes() -> int:
    return int(float(os.environ.get("TUNEVLSEG_DATA_CACHE_MB", "4096")) * 2**20)


class ArrayCache:
    """Fill-until-full cache. Epochs visit every sample, so LRU would evict exactly what comes next;
    keeping the first N that fit gives a stable hit rate. Keys include the file's mtime and size, so an
    edited file is decoded again."""

    def __init__(self) -> None:
        self._data: dict[tuple, tuple] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def key(path: Path, *extra: object) -> tuple:
        st = path.stat()
        return (str(path), st.st_mtime_ns, st.st_size, *extra)

    def get(self, key: tuple):
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
            return value

    def put(self, key: tuple, value: tuple, nbytes: int) -> None:
        with self._lock:
            if key not in self._data and self._bytes + nbytes <= _cache_limit_bytes():
                self._data[key] = value
                self._bytes += nbytes

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)


CACHE = ArrayCache()
