"""One colour-blind-safe look per dataset, shared by every figure (no torch, no pyplot state).

Colours are Okabe & Ito's eight (distinguishable under the common colour-vision deficiencies, and in grey
scale by lightness for most pairs); beyond eight datasets the colours repeat with a different marker, so
every dataset keeps a distinct (colour, marker) pair. The paper's ten datasets come first in its order, so
a dataset has the same look in every figure of every run.
"""

from __future__ import annotations

from typing import Iterable

from benchmark.results.tables import DATASETS

OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
PAPER_ORDER = tuple(d.key for d in DATASETS)


def dataset_styles(keys: Iterable[str]) -> dict[str, tuple[str, str]]:
    """{dataset: (colour, marker)}: paper datasets by their fixed position, others after them by name.

    Only the datasets present get a slot, so a three-dataset run uses three distinct colours (the paper's
    slots are kept for its own datasets so that they look the same in a partial run)."""
    keys = list(dict.fromkeys(keys))
    paper = [k for k in PAPER_ORDER if k in keys]
    others = sorted(k for k in keys if k not in PAPER_ORDER)
    if paper:
        slots = {k: PAPER_ORDER.index(k) for k in paper}
        slots.update({k: len(PAPER_ORDER) + i for i, k in enumerate(others)})
    else:
        slots = {k: i for i, k in enumerate(others)}
    n = len(OKABE_ITO)
    return {k: (OKABE_ITO[s % n], MARKERS[(s // n) % len(MARKERS)]) for k, s in slots.items()}
