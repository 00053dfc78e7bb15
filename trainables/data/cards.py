"""Data cards: one YAML file per dataset in `datasets/`, loaded strictly into frozen dataclasses.

A card says where a dataset comes from, how it is laid out on disk, which annotation files define its
splits, its classes and prompts, and how many samples each split must have (paper Table 1). The readers
take every layout decision from the card, so adding a dataset in an existing layout is one YAML file.

`datasets/` is found through `trainables.resources` (the checkout's root, or the copy a wheel ships; it is
never a Python package: a `datasets/__init__.py` would shadow Hugging Face `datasets`); set TUNEVLSEG_CARDS
to use another folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


from trainables.config import ConfigError, from_dict, read_yaml_mapping

SPLITS = ("train", "val", "test")
CARDS_ENV = "TUNEVLSEG_CARDS"


@dataclass(frozen=True)
class ClassInfo:
    """One foreground class. `prompt` is the p1 text the model sees (for image_dir layouts: name + ".")."""

    name: str
    prompt: str | list | None = None
    note: str | None = None


@dataclass(frozen=True)
class DataCard:
    name: str  # registry-style key, equal to the file name (kvasir, mini_polyp, ...)
    display: str  # name used in tables (Kvasir, PascalVOC, ...)
    title: str  # full dataset name
    domain: Literal["medical", "open", "synthetic"]
    modality: str  # endoscopy, dermoscopy, ultrasound, street scenes, ...
    layout: Literal["medvlsm", "image_dir"]
    classes: tuple  # of ClassInfo (converted in __post_init__ from YAML dicts)
    counts: dict  # split -> number of (image, class, mask) samples; paper Table 1
    citation: str = ""
    licence: str = ""
    homepage: str = ""
    download: str = ""  # how to obtain the files and lay them out (one paragraph)
    folder: str = ""  # conventional directory name under a data root (medvlsm's ds_name)
    image_size: str = ""  # published resolution, free text
    # split -> shipped annotation file, relative to the cards folder (medvlsm layout). A split without
    # one must have `anns/<split>.json` under the dataset root.
    annotations: dict = field(default_factory=dict)
    # split -> folder (relative to the root) holding images / masks. Missing splits use `default_*`.
    images: dict = field(default_factory=dict)
    masks: dict = field(default_factory=dict)
    default_images: str = "images"
    default_masks: str = "masks"
    image_suffix: str = ".png"  # image_dir layout: image file = mask stem + this suffix
    # Cityscapes / VOC publish no test labels: the paper evaluates on val. {"test": "val"} says so.
    split_alias: dict = field(default_factory=dict)
    prompt_key: str = "p1"  # TuneVLSeg uses medvlsm's p1 in every schedule script
    mask_threshold: int = 127  # foreground = grey value > threshold (JPEG masks are not exactly 0/255)
    # A mask with more than this fraction of pixels far from both 0 and 255 is not a binary mask.
    max_ambiguous_fraction: float = 0.01
    known_duplicates: tuple = ()  # img_names listed twice upstream; kept, to stay faithful
    known_leaks: tuple = ()  # img_names in two splits upstream; kept, reported by `data check`
    notes: tuple = ()
    path: str = ""  # the YAML file it came from (filled in by the loader)

    def __post_init__(self) -> None:
        where = f"data card {self.name!r}"
        classes = tuple(c if isinstance(c, ClassInfo) else from_dict(ClassInfo, _mapping(c, f"{where} classes"),
                                                                       f"{where} class") for c in self.classes)
        object.__setattr__(self, "classes", classes)
        for key in ("known_duplicates", "known_leaks", "notes"):
            object.__setattr__(self, key, tuple(getattr(self, key) or ()))
        if not classes:
            raise ConfigError(f"{where}: `classes` is empty; list at least one foreground class")
        for key in ("counts", "annotations", "images", "masks", "split_alias"):
            value = getattr(self, key)
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: `{key}` must be a mapping split -> value, got {value!r}")
            bad = sorted(set(value) - set(SPLITS))
            if bad:
                raise ConfigError(f"{where}: `{key}` has unknown split(s) {bad}; allowed: {', '.join(SPLITS)}")
        for split, target in self.split_alias.items():
            if target not in SPLITS or target == split or target in self.split_alias:
                raise ConfigError(f"{where}: split_alias {split} -> {target!r} must name another real split")
        for split, n in self.counts.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ConfigError(f"{where}: counts.{split} must be a non-negative integer, got {n!r}")
        if not 0 <= self.mask_threshold < 255:
            raise ConfigError(f"{where}: mask_threshold must be in [0, 254], got {self.mask_threshold}")
        if self.layout == "image_dir" and (self.annotations or not self.images or not self.masks):
            raise ConfigError(f"{where}: layout image_dir needs `images` and `masks` per split and no `annotations`")

    # --- small helpers the readers use -------------------------------------------------------------
    def source_split(self, split: str) -> str:
        """The split whose files serve `split` (test -> val for Cityscapes / VOC)."""
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        return self.split_alias.get(split, split)

    def image_dir(self, split: str) -> str:
        split = self.source_split(split)
        return self.images.get(split, self.default_images)

    def mask_dir(self, split: str) -> str:
        split = self.source_split(split)
        return self.masks.get(split, self.default_masks)

    def expected_count(self, split: str) -> int | None:
        return self.counts.get(self.source_split(split))

    def shipped_annotation(self, split: str) -> Path | None:
        rel = self.annotations.get(self.source_split(split))
        return None if rel is None else cards_dir() / rel


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return value


def cards_dir() -> Path:
    """The folder holding the data cards: $TUNEVLSEG_CARDS, else the shipped `datasets/`."""
    from trainables import resources

    env = os.environ.get(CARDS_ENV)
    path = Path(env).expanduser() if env else resources.path("cards")
    if not path.is_dir():
        where = f"{CARDS_ENV}={env}" if env else "the installed package (reinstall tunevlseg)"
        raise FileNotFoundError(f"data card folder {path} not found; check {where}")
    return path


def card_names() -> list[str]:
    return sorted(p.stem for p in cards_dir().glob("*.yaml"))


def load_card(name_or_path: str | os.PathLike | DataCard) -> DataCard:
    """Load a card by name (`kvasir`) or by path to a YAML file; a DataCard is returned unchanged."""
    if isinstance(name_or_path, DataCard):
        return name_or_path
    text = str(name_or_path)
    looks_like_path = text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text
    if looks_like_path:
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data card {path} not found")
    else:
        from trainables.registry import spelling

        text = spelling(text, card_names())  # mini-polyp (as in cell ids) is mini_polyp
        path = cards_dir() / f"{text}.yaml"
        if not path.is_file():
            from trainables.resources import did_you_mean

            raise ConfigError(f"unknown dataset {text!r}{did_you_mean(text, card_names())}; allowed: "
                              f"{', '.join(card_names())} (or a path to a card YAML)")
    data = read_yaml_mapping(path, f"data card {path}")
    if "path" in data:
        raise ConfigError(f"data card {path}: `path` is filled in by the loader; remove it")
    card = from_dict(DataCard, data, where=f"data card {path.name}")
    if not looks_like_path and card.name != path.stem:
        raise ConfigError(f"data card {path}: name {card.name!r} must equal the file name {path.stem!r}")
    object.__setattr__(card, "path", str(path))
    return card
