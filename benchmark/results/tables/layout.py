"""Names and layout of the paper's result tables: its ten datasets and their groups (Table 1), the row order
of Tables 3 and 5, the variants behind Tables 3-5, the titles, and the marks for learners beyond the paper.

Display names are mapped once, here (through the catalog's cards); every table module reads them from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from trainables.catalog import LEARNERS, learner_display, vlsm_display


@dataclass(frozen=True)
class Dataset:
    key: str
    display: str
    group: str


DATASETS = (
    Dataset("bkai", "BKAI", "Non-Radiology"),
    Dataset("clinicdb", "ClinicDB", "Non-Radiology"),
    Dataset("kvasir", "Kvasir", "Non-Radiology"),
    Dataset("dfu", "DFU", "Non-Radiology"),
    Dataset("isic", "ISIC", "Non-Radiology"),
    Dataset("busi", "BUSI", "Radiology"),
    Dataset("camus", "CAMUS", "Radiology"),
    Dataset("chexlocalize", "CheXlocalize", "Radiology"),
    Dataset("cityscapes", "Cityscapes", "Open Domain"),
    Dataset("voc", "PascalVOC", "Open Domain"),
)
PAPER_KEYS = frozenset(d.key for d in DATASETS)
OTHER_GROUP = "Other"  # datasets a spec adds beyond the paper's ten (e.g. a mini data set)

# Paper Table 3 row order: E2E baselines first, then CLIPSeg's six learners, then CRIS's two.
TABLE3_ROWS = (
    ("cris", "e2e"), ("clipseg", "e2e"),
    ("clipseg", "maple"), ("clipseg", "shared_separate"), ("clipseg", "shared_attention"), ("clipseg", "vpt"),
    ("clipseg", "cocoop"), ("clipseg", "coop"),
    ("cris", "cocoop"), ("cris", "coop"),
)
TABLE5_ROWS = TABLE3_ROWS[2:]  # no E2E: the ablation removes the upsampler of the prompt-tuned models

VARIANTS = {3: "default", 4: "gaussian_init", 5: "no_upsampler"}
INIT_LABELS = {"gaussian_init": "Gaussian", "default": "a photo of a"}

TITLES = {
    2: "The search space for the hyperparameter search.",
    3: "Test Dice (%) for each viable combination of VLSM and context learner, and end-to-end (E2E) "
       "finetuning, for all datasets.",
    4: "Test Dice (%) of Maple when the first context vectors are initialised from a Gaussian "
       "distribution vs 'a photo of a'.",
    5: "Test Dice (%) for each viable combination of VLSM and context learner when no new learnable "
       "last upsampling layer is introduced.",
}

# Where the paper's E2E rows come from (docs/learners.md): printed under every table with E2E rows.
E2E_SOURCE_NOTE = ("E2E rows: the paper's medical E2E numbers are Poudel et al.'s (medvlsm) CLIPSeg fine-tuned "
                   "with medvlsm's recipe, most likely its main line's (experiments/medvlsm_e2e_main.yaml; "
                   "experiments/medvlsm_e2e.yaml follows later side branches); only Cityscapes and VOC used the "
                   "original TuneVLSeg's E2E scripts (experiments/table3.yaml, reference.yaml).")


def vlsm_name(key: str) -> str:
    """The display name of the VLSM's catalog entry (the key itself for a name the catalog does not know)."""
    return vlsm_display(key)


def learner_name(key: str) -> str:
    return learner_display(key)


def in_average(learner: str) -> bool:
    """Prompt learners count towards "Average across Methods"; a learner that prompts nothing (E2E) does not,
    nor does one beyond the paper (LoRA, VLSM-Adapter), so that the average stays the paper's."""
    return learner not in LEARNERS or (LEARNERS.get(learner).prompted and not beyond_paper(learner))


def beyond_paper(learner: str) -> bool:
    return learner in LEARNERS and LEARNERS.get(learner).beyond_paper


# Marks a learner the paper did not evaluate (catalog `beyond_paper`): its Table 3/5 rows and Table 2 entries.
BEYOND_MARK = "‡"
BEYOND_NOTE = (f"{BEYOND_MARK} beyond the paper: a learner the paper did not evaluate (docs/learners.md, "
               "\"Beyond the paper\"); listed after the paper's rows and not in the Average across Methods.")


def row_label(learner: str) -> str:
    return learner_name(learner) + (f" {BEYOND_MARK}" if beyond_paper(learner) else "")


def dataset_groups(datasets: Sequence[Dataset]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for d in datasets:
        if out and out[-1][0] == d.group:
            out[-1] = (d.group, out[-1][1] + 1)
        else:
            out.append((d.group, 1))
    return out
