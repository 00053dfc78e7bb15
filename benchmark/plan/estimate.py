"""What a sweep costs before it runs: `tunevlseg plan SPEC --estimate [--from RUN_DIR]`.

Per cell:  images = trials x max_epochs x (train + val samples)      (sizes from the data cards' `counts`)
           GPU-seconds = images x GPU-seconds per image
           slot-seconds = GPU-seconds / the cell's GPU share          (how long its trials hold their slots)

Seconds per image come, per (VLSM, learner), from one of three places, in this order:
1. `--gpu-seconds-per-image X`: one figure for every cell (e.g. measured by benchmarks/gpu_step.py);
2. `--from RUN_DIR`: a finished run's Parquet: sum(seconds) / sum(epochs_run x (train + val)) over its
   trials of that (VLSM, learner). Those are *trial* (slot) seconds, so they fold in each trial's fixed
   cost, and they are taken to have been measured at the GPU share this spec gives the cell;
3. the analytic GFLOP per image the catalog gives (an assumption, printed as one): the VLSM card's
   `cost` (`VLSMCost`) summed over the terms its learner card's `cost` names. A VLSM or learner without
   cost facts is "unpriced": its cells show it, and the totals leave them out.

`max_epochs` is an upper bound: early stopping and ASHA only make a sweep cheaper. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from trainables.catalog import LEARNERS, VLSMS, learner_display
from trainables.protocol import DEFAULT_MAX_EPOCHS, STATUS_ERROR

# Whole-GPU seconds per training image on an H100/H200-class GPU, from the analytic training FLOPs per
# image (the catalog's cost facts, `train_gflop`) divided by 35% of 989 TFLOPS (bf16 dense): an ASSUMPTION
# until a run measures it.
ASSUMED_MFU, ASSUMED_PEAK_TFLOPS = 0.35, 989.0
UNPRICED = "unpriced"
# The frozen-feature cache (trainables/feature_cache.py, `data.feature_cache`, on unless "off"): for the
# learners that leave the image encoder alone, an image whose features are cached skips the frozen image
# pass (`cached_gflop`). Cached: every val image, and the train draws that leave the pixels untouched:
# neither of the two train transforms (trainables/data/transforms.py: Affine, RandomBrightnessContrast, each
# p AUGMENT_P, drawn independently) fired, (1 - p)^2 = 64 % of them (tests/trainables/data/test_transforms.py
# measures the rate). Steady state: a draw untouched now is a hit once any earlier epoch left it untouched
# too. Assumes the cell's images fit the bound.
AUGMENT_P, AUGMENT_TRANSFORMS = 0.2, 2  # kept equal to trainables/data/transforms.py by a test (torch-free side)
UNTOUCHED_TRAIN_FRACTION = (1 - AUGMENT_P) ** AUGMENT_TRANSFORMS


def _costs(vlsm: str, learner: str):
    """(the VLSM's `VLSMCost`, the learner's cost terms on it), or None when either has no cost facts."""
    if vlsm not in VLSMS or learner not in LEARNERS:
        return None
    cost, terms = VLSMS.get(vlsm).cost, LEARNERS.get(learner).cost_terms(vlsm)
    if cost is None or terms is None or any(isinstance(t, str) and getattr(cost, t) is None for t in terms):
        return None
    return cost, terms


def train_gflop(vlsm: str, learner: str) -> float | None:
    """Analytic GFLOP of one training image of `learner` on `vlsm`: the VLSM's frozen forward plus the terms
    the learner's card names on it (`VLSMCost` fields, or GFLOP of its own); None (unpriced) without cost facts."""
    costs = _costs(vlsm, learner)
    if costs is None:
        return None
    cost, terms = costs
    return cost.forward + sum(getattr(cost, t) if isinstance(t, str) else t for t in terms)


def cached_gflop(vlsm: str, learner: str) -> float:
    """GFLOP a feature-cache hit skips; 0 for a learner that trains the image encoder or its input."""
    costs = _costs(vlsm, learner)
    # A number among the terms is GFLOP paid in the image encoder (`catalog.CostTerms`): not frozen either.
    if (costs is None or not costs[1] or {"vision_grad", "weight_grad"} & set(costs[1])
            or any(not isinstance(t, str) for t in costs[1])):
        return 0.0
    cost, terms = costs
    return cost.cached_image_features if "image_features" in terms else cost.cached_image_pass


def assumed_seconds_per_image(vlsm: str, learner: str) -> float | None:
    """Whole-GPU seconds per training image at the assumed MFU, without the cache; None when unpriced."""
    gflop = train_gflop(vlsm, learner)
    return None if gflop is None else gflop * 1e9 / (ASSUMED_MFU * ASSUMED_PEAK_TFLOPS * 1e12)


def cache_saving(vlsm: str, learner: str, train: int, val: int, config: dict | None = None) -> float:
    """Analytic GFLOP saved per image (averaged over train + val) by the frozen-feature cache; 0 where
    the learner prompts the image encoder or the cell turns the cache off."""
    setting = ((config or {}).get("data") or {}).get("feature_cache", "auto")
    if str(setting).strip().lower() in ("off", "0", "0.0") or not cached_gflop(vlsm, learner):
        return 0.0
    hits = (UNTOUCHED_TRAIN_FRACTION * train + val) / max(train + val, 1)
    return cached_gflop(vlsm, learner) * hits


@dataclass
class Rate:
    seconds_per_image: float
    source: str  # "--gpu-seconds-per-image", "run <dir> (n trials)", "assumed", UNPRICED (seconds NaN)
    slot_seconds: bool  # True: trial/slot seconds (from a run); False: whole-GPU seconds


@dataclass
class CellEstimate:
    cell_id: str
    vlsm: str
    learner: str
    dataset: str
    trials: int
    epochs: int
    images_per_epoch: int  # train + val samples
    gpu_share: float
    rate: Rate
    overhead_seconds: float = 0.0  # fixed slot-seconds per trial (worker start, weights, data) on top
    images: int = 0
    gpu_seconds: float = 0.0
    slot_seconds: float = 0.0

    def compute(self) -> "CellEstimate":
        self.images = self.trials * self.epochs * self.images_per_epoch
        if self.rate.slot_seconds:
            self.slot_seconds = self.images * self.rate.seconds_per_image
            self.gpu_seconds = self.slot_seconds * self.gpu_share
        else:
            self.gpu_seconds = self.images * self.rate.seconds_per_image
            self.slot_seconds = self.gpu_seconds / self.gpu_share if self.gpu_share > 0 else math.nan
        if self.overhead_seconds:
            self.slot_seconds += self.trials * self.overhead_seconds
            self.gpu_seconds += self.trials * self.overhead_seconds * self.gpu_share
        return self


@dataclass
class Estimate:
    cells: list[CellEstimate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def gpu_hours(self) -> float:
        return sum(c.gpu_seconds for c in self.cells if math.isfinite(c.gpu_seconds)) / 3600

    @property
    def slot_hours(self) -> float:
        return sum(c.slot_seconds for c in self.cells if math.isfinite(c.slot_seconds)) / 3600

    def subtotals(self) -> dict[tuple[str, str], dict[str, float]]:
        out: dict[tuple[str, str], dict[str, float]] = {}
        for c in self.cells:
            s = out.setdefault((c.vlsm, c.learner), {"cells": 0, "trials": 0, "images": 0, "gpu_hours": 0.0,
                                                      "slot_hours": 0.0, "seconds_per_image": c.rate.seconds_per_image,
                                                      "source": c.rate.source})
            s["cells"] += 1
            s["trials"] += c.trials
            s["images"] += c.images
            if math.isfinite(c.gpu_seconds):
                s["gpu_hours"] += c.gpu_seconds / 3600
            if math.isfinite(c.slot_seconds):
                s["slot_hours"] += c.slot_seconds / 3600
        return out


def json_ready(value: Any) -> Any:
    """`value` with every NaN/inf float (an unpriced cell's seconds per image) as None: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def split_sizes(dataset: str, load_card: Callable[[str], Any] | None = None) -> tuple[int, int]:
    """(train, val) sample counts from the dataset's card."""
    if load_card is None:
        from trainables.data.cards import load_card
    card = load_card(dataset)
    train, val = card.expected_count("train"), card.expected_count("val")
    if train is None or val is None:
        raise ValueError(f"data card {dataset!r} has no counts for train/val; add `counts: {{train: N, val: N}}`")
    return int(train), int(val)


def rates_from_rows(rows: Iterable[dict[str, Any]],
                    sizes: Callable[[str], tuple[int, int]]) -> dict[tuple[str, str], tuple[float, int]]:
    """{(vlsm, learner): (trial seconds per image, trials used)} from Parquet rows of a finished run.

    Rows without `seconds` or `epochs_run` (a trial that failed before its first epoch) are skipped, and so
    are errored ones: their time says nothing about a trial's cost.
    """
    seconds: dict[tuple[str, str], float] = {}
    images: dict[tuple[str, str], float] = {}
    count: dict[tuple[str, str], int] = {}
    for r in rows:
        s, e = r.get("seconds"), r.get("epochs_run")
        if r.get("status") == STATUS_ERROR or not _positive(s) or not _positive(e):
            continue
        try:
            train, val = sizes(r["dataset"])
        except (ValueError, FileNotFoundError, KeyError):
            continue  # a dataset without a card: cannot normalise its time
        key = (r["vlsm"], r["learner"])
        seconds[key] = seconds.get(key, 0.0) + float(s)
        images[key] = images.get(key, 0.0) + float(e) * (train + val)
        count[key] = count.get(key, 0) + 1
    return {k: (seconds[k] / images[k], count[k]) for k in seconds if images[k] > 0}


def estimate(cells, *, sizes: Callable[[str], tuple[int, int]], gpu_seconds_per_image: float | None = None,
             measured: dict[tuple[str, str], tuple[float, int]] | None = None, run_label: str = "",
             overhead_seconds: float = 0.0) -> Estimate:
    """`cells`: objects with id, vlsm, learner, dataset, trials, reseeds, config (nested trial config), resources."""
    est = Estimate()
    assumed: set[tuple[str, str]] = set()
    unpriced: set[tuple[str, str]] = set()
    measured = measured or {}
    for c in cells:
        key = (c.vlsm, c.learner)
        if gpu_seconds_per_image is not None:
            rate = Rate(gpu_seconds_per_image, "--gpu-seconds-per-image", slot_seconds=False)
        elif key in measured:
            spi, n = measured[key]
            rate = Rate(spi, f"run {run_label} ({n} trials)", slot_seconds=True)
        train, val = sizes(c.dataset)
        if gpu_seconds_per_image is None and key not in measured and train_gflop(*key) is None:
            rate = Rate(math.nan, UNPRICED, slot_seconds=False)
            unpriced.add(key)
        elif gpu_seconds_per_image is None and key not in measured:
            saved = cache_saving(c.vlsm, c.learner, train, val, c.config)
            gflop = train_gflop(*key) - saved
            rate = Rate(gflop * 1e9 / (ASSUMED_MFU * ASSUMED_PEAK_TFLOPS * 1e12),
                        "assumed, feature cache" if saved else "assumed", slot_seconds=False)
            assumed.add(key)
        epochs = int(c.config.get("train", {}).get("max_epochs", DEFAULT_MAX_EPOCHS))
        est.cells.append(CellEstimate(c.id, c.vlsm, c.learner, c.dataset, c.trials + c.reseeds, epochs, train + val,
                                      float(c.resources.get("gpu", 0.0)), rate, overhead_seconds).compute())
    if measured and gpu_seconds_per_image is None:
        missing = sorted({k for k in assumed})
        if missing:
            est.notes.append("not in the run, so assumed: " + ", ".join(f"{v}/{lrn}" for v, lrn in missing))
    if assumed:
        est.notes.append(
            f"assumed seconds/image = analytic training GFLOP per image / ({ASSUMED_MFU:.0%} MFU x "
            f"{ASSUMED_PEAK_TFLOPS:g} TFLOPS bf16, an H100/H200-class GPU), whole GPU; measure with "
            "benchmarks/gpu_step.py and pass --gpu-seconds-per-image, or --from a finished run")
    if unpriced:
        est.notes.append(
            "unpriced, left out of the totals: " + ", ".join(f"{v}/{lrn}" for v, lrn in sorted(unpriced)) +
            " (no cost facts: add `cost=` to the VLSM's register_vlsm and the learner's register_learner, "
            "pass --gpu-seconds-per-image, or --from a run that has them)")
    if any(c.rate.source == "assumed, feature cache" for c in est.cells):
        # The learners the cache serves on these VLSMs: the estimate's first, in its order, then the catalog's.
        vlsms = {c.vlsm for c in est.cells}
        served = [lrn for lrn in dict.fromkeys([c.learner for c in est.cells] + LEARNERS.names())
                  if any(cached_gflop(v, lrn) for v in vlsms)]
        est.notes.append(
            f"feature cache: {'/'.join(map(learner_display, served))} skip the frozen image pass for val images and the "
            f"{UNTOUCHED_TRAIN_FRACTION:.0%} of train draws that leave the image untouched (data.feature_cache; "
            "assumes the cell's images fit its bound, docs/training.md)")
    if measured and gpu_seconds_per_image is None:
        est.notes.append("measured seconds are trial (slot) seconds including each trial's fixed cost, taken "
                         "to be measured at the GPU share this spec gives the cell")
    if overhead_seconds:
        est.notes.append(f"plus {overhead_seconds:g} s of fixed cost per trial, holding the trial's GPU share")
    est.notes.append("epochs = train.max_epochs (an upper bound: early stopping and ASHA end trials sooner)")
    return est


def format_estimate(est: Estimate, spec_name: str, gpus: int | None = None) -> str:
    lines = [f"{spec_name}: estimated cost, {len(est.cells)} cells, {sum(c.trials for c in est.cells)} trials"]
    head = f"{'vlsm':<8} {'learner':<17} {'cells':>5} {'trials':>6} {'M images':>9} {'ms/image':>9} " \
           f"{'slot-h':>8} {'GPU-h':>8}  source"
    lines += [head, "-" * len(head)]
    for (vlsm, learner), s in est.subtotals().items():
        lines.append(f"{vlsm:<8} {learner:<17} {s['cells']:>5} {s['trials']:>6} {s['images'] / 1e6:>9.3f} "
                     f"{s['seconds_per_image'] * 1e3:>9.3f} {s['slot_hours']:>8.2f} {s['gpu_hours']:>8.2f}  "
                     f"{s['source']}")
    by_vlsm: dict[str, float] = {}
    for c in est.cells:
        by_vlsm[c.vlsm] = by_vlsm.get(c.vlsm, 0.0) + (c.gpu_seconds / 3600 if math.isfinite(c.gpu_seconds) else 0.0)
    lines.append("-" * len(head))
    for vlsm, h in by_vlsm.items():
        lines.append(f"{vlsm:<8} {'(all learners)':<17} {'':>5} {'':>6} {'':>9} {'':>9} {'':>8} {h:>8.2f}")
    lines.append(f"{'total':<26} {len(est.cells):>5} {sum(c.trials for c in est.cells):>6} "
                 f"{sum(c.images for c in est.cells) / 1e6:>9.3f} {'':>9} {est.slot_hours:>8.2f} {est.gpu_hours:>8.2f}")
    if gpus:
        lines.append(f"on {gpus} GPU(s) with every slot kept busy: about {est.gpu_hours / gpus:.2f} h of wall time")
    lines += [f"note: {n}" for n in est.notes]
    return "\n".join(lines)


def read_run_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    from benchmark.results.run_dir import RunDir

    run = RunDir(run_dir)
    if not run.has_trials():
        raise FileNotFoundError(f"--from {run.path}: no trial Parquet files under {run.trials_dir} "
                                "(expected the directory a `tunevlseg run` wrote: <storage>/<spec name>)")
    return run.all_rows()


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
