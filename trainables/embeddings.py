"""A VLSM's own, frozen embeddings of datasets' prompts and images: the input of the paper's Fig. 4.

The paper (§6.1) plots t-SNE of CLIP's text embeddings of every distinct prompt and image embeddings of
every image of each dataset, plus the phrases of PhraseCut (CLIPSeg's pretraining set), to show the domain
shift from open-domain to medical images. This module computes those vectors with the adapters' frozen,
un-prompted encoders (`VLSMAdapter.text_features` / `image_features`); `benchmark.results.embeddings` reduces them
to 2-D and draws the figures (no torch there).

Images go through the evaluation pipeline of the trials (resize to the VLSM's resolution, normalise, no
augmentation), so the image vectors are what a prompt learner's frozen encoder sees. A reference set is
optional: a text file of phrases (PhraseCut's, when the user has them), or `mini-corpus`: the first N
samples of the corpus the mini VLSMs were pretrained on (`trainables.mini.corpus`, pretraining seed), which
plays PhraseCut's part in the mini world.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from trainables.data.cards import load_card
from trainables.data.readers import decode_image, list_entries, normalise_prompt
from trainables.data.transforms import resize_image

MINI_CORPUS = "mini-corpus"
TEXT, IMAGE = "text", "image"


@dataclass
class Embeddings:
    """One row per embedded item; `vectors[i]` is the L2-normalised embedding of `rows[i]`."""

    rows: list[dict] = field(default_factory=list)  # dataset, kind, split, item
    vectors: list[np.ndarray] = field(default_factory=list)

    def add(self, dataset: str, kind: str, items: Sequence[str], splits: Sequence[str], vecs: torch.Tensor) -> None:
        v = torch.nn.functional.normalize(vecs.float(), dim=-1).cpu().numpy()
        for item, split, vec in zip(items, splits, v):
            self.rows.append({"dataset": dataset, "kind": kind, "split": split, "item": item})
            self.vectors.append(vec)

    def matrix(self, kind: str) -> tuple[list[dict], np.ndarray]:
        idx = [i for i, r in enumerate(self.rows) if r["kind"] == kind]
        return [self.rows[i] for i in idx], np.stack([self.vectors[i] for i in idx]) if idx else np.zeros((0, 0))


def load_vlsm(vlsm: str, weights: str | None, config: str | None = None):
    """The frozen adapter in eval mode (random init from a shipped config when `weights` is None)."""
    from trainables.catalog import VLSMS

    adapter = VLSMS.get(vlsm)(weights=weights, config=config)
    return adapter.eval().requires_grad_(False)


def _batches(seq: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(seq), size):
        yield seq[i: i + size]


@torch.no_grad()
def _text(adapter, phrases: Sequence[str], batch_size: int, device) -> torch.Tensor:
    out = []
    for chunk in _batches(list(phrases), batch_size):
        tok = adapter.tokenize(list(chunk))
        out.append(adapter.text_features(tok["input_ids"].to(device), tok["attention_mask"].to(device)))
    return torch.cat(out)


@torch.no_grad()
def _images(adapter, arrays: Sequence[np.ndarray], batch_size: int, device) -> torch.Tensor:
    """(H, W, 3) uint8 images -> image_features, through resize + normalise as the eval pipeline does."""
    spec = adapter.spec
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    out = []
    for chunk in _batches(list(arrays), batch_size):
        x = np.stack([resize_image(a, spec.image_size) for a in chunk])
        x = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float() / 255.0
        out.append(adapter.image_features((x - mean) / std))
    return torch.cat(out)


def dataset_items(card_name: str, root: str | os.PathLike, splits: Sequence[str], max_images: int | None,
                  seed: int = 0):
    """(distinct prompts, [(split, image name, uint8 array)]) of one dataset; each image once even when it
    has several classes (medvlsm layout: one entry per image and class). `max_images` draws a fixed-seed
    subset per dataset (all when None)."""
    card = load_card(card_name)
    prompts: dict[str, None] = {}
    seen: dict[Path, tuple[str, str]] = {}
    for split in splits:
        entries, _ = list_entries(card, root, split)
        for e in entries:
            for p in e.prompts:
                prompts.setdefault(p)
            seen.setdefault(e.image, (split, e.img_name))
    images = sorted(seen.items(), key=lambda kv: str(kv[0]))
    if max_images is not None and len(images) > max_images:
        keep = np.random.default_rng(seed).choice(len(images), max_images, replace=False)
        images = [images[i] for i in sorted(keep)]
    # the trials' decoder: uint8 RGB whatever the file's bit depth, palette or channel count
    return list(prompts), [(split, name, decode_image(path)) for path, (split, name) in images]


def mini_corpus(n: int) -> tuple[list[str], list[np.ndarray]]:
    """The first `n` samples of the mini VLSMs' pretraining stream: (distinct phrases, images)."""
    from trainables.mini.corpus import make_sample
    from trainables.mini.pretrain import PretrainConfig

    cfg = PretrainConfig()
    rng = np.random.default_rng(cfg.seed)  # make_batch draws sample after sample from this one stream
    samples = [make_sample(rng, cfg.image_size) for _ in range(n)]
    phrases = list(dict.fromkeys(normalise_prompt(s[1]) for s in samples))  # pretraining appends "."
    return phrases, [s[0] for s in samples]


def read_phrases(path: str | os.PathLike) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such phrase file (one phrase per line, e.g. PhraseCut's phrases)")
    phrases = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not phrases:
        raise ValueError(f"{path}: no phrases in the file (one phrase per line)")
    return list(dict.fromkeys(normalise_prompt(p) for p in phrases))


def embed(adapter, datasets: dict[str, str | os.PathLike], *, splits: Sequence[str] = ("train", "val", "test"),
          max_images: int | None = None, reference: str | None = None, reference_size: int = 200,
          batch_size: int = 32, device: str | torch.device = "cpu") -> Embeddings:
    """Text and image embeddings of every dataset in `datasets` (card name -> root) and of the reference.

    `reference`: None, `mini-corpus`, or a path to a phrase file (text only, labelled by its file stem)."""
    device = torch.device(device)
    adapter = adapter.to(device)
    out = Embeddings()
    for name, root in datasets.items():
        prompts, images = dataset_items(name, root, splits, max_images)
        out.add(name, TEXT, prompts, [""] * len(prompts), _text(adapter, prompts, batch_size, device))
        out.add(name, IMAGE, [n for _, n, _ in images], [s for s, _, _ in images],
                _images(adapter, [a for _, _, a in images], batch_size, device))
    if reference == MINI_CORPUS:
        phrases, images = mini_corpus(reference_size)
        label = f"{MINI_CORPUS} (pretraining)"
        out.add(label, TEXT, phrases, [""] * len(phrases), _text(adapter, phrases, batch_size, device))
        out.add(label, IMAGE, [f"sample-{i:04d}" for i in range(len(images))], [""] * len(images),
                _images(adapter, images, batch_size, device))
    elif reference:
        phrases = read_phrases(reference)
        out.add(Path(reference).stem, TEXT, phrases, [""] * len(phrases), _text(adapter, phrases, batch_size, device))
    return out
