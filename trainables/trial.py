"""One trial: train a context learner on one dataset and report the numbers every table is built from.

`fit(cfg, report)` is a plain function that reads top to bottom (nanoGPT's train.py is the model) and runs
without Ray; `tune_trainable(config)` at the bottom is the thin Ray Tune shell around it.

Defaults follow the original (reference spec §5): AdamW with no weight decay on context vectors, the
residual factor, biases and norms; Dice + 0.2 BCE; effective batch 32 by gradient accumulation;
ReduceLROnPlateau(min, 0.2, patience 5) on val loss; 20 epochs max / 10 min / early stopping on val loss
(patience 12, min delta 1e-4); validation every epoch; the best-val-Dice state evaluated on test; seed 12345.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import logging
import math
import random
import tempfile
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from trainables import feature_cache
from trainables.config import ConfigError, from_dict
from trainables.data.readers import DataError
from trainables.losses import dice_bce_loss
from trainables.metrics import SegMetrics
from trainables.protocol import CHECKPOINT_ARTIFACT, DEFAULT_MAX_EPOCHS, FINAL_FILE, STATUS_DIVERGED, STATUS_ERROR, STATUS_OK

Precision = Literal["auto", "32", "bf16-mixed", "16-mixed"]
MaskTarget = Literal["binary", "original"]
Scheduler = Literal["plateau", "cosine"]
EarlyStopOn = Literal["val_loss", "val_dice"]
DecayOn = Literal["weights", "all"]
Objective = Literal["last_val_loss", "best_val_loss", "best_val_dice"]
CHECKPOINT_FILE = "trial_state.pt"
_CPU_AMP_WARNED: set[str] = set()  # mixed precisions already warned about on CPU in this process


@dataclass(frozen=True)
class DataConfig:
    dataset: str  # a data card name (datasets/<name>.yaml) or a path to a card
    root: str  # absolute path of the dataset on every node
    cache: bool = True  # keep decoded, resized samples in memory (the medical sets are small)
    num_workers: int = 0
    augment: bool = True  # the original's random augmentation on the train split (medvlsm used none)
    # binary: mask = grey > 127 (the card's threshold), the target of loss and metrics. original: the
    # original code's targets on JPEG masks: loss on grey / 255 (soft), metrics count only grey == 255 as
    # foreground (torchmetrics on mask.long()). Metrics at the original size keep > 127 (its offline script).
    mask_target: MaskTarget = "binary"
    # Frozen image features of un-augmented images, per worker (CoOp/CoCoOp): auto, off or a bound in GB.
    # (bool too: YAML 1.1 reads `off` as false.)
    feature_cache: str | float | bool = "auto"
    # medvlsm's main line (experiments/medvlsm_e2e_main.yaml); both defaults leave a trial as it was.
    # Prompt level of the annotation files (p0..p9, as the dataset has them) instead of the card's p1.
    prompt_level: str | None = None
    # How files become S x S: bicubic (cv2, the original's) or bilinear_antialias (torchvision's Resize on a PIL
    # image: Pillow BILINEAR image, Pillow NEAREST mask); trainables/data/transforms.py RESIZES.
    resize: str = "bicubic"
    # End every prompt with a full stop (TuneVLSeg's insert_stop_at_last); false: as the annotation files write
    # them, as medvlsm did ("polyp", and "" for p0).
    prompt_full_stop: bool = True

    def __post_init__(self):
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.mask_target not in ("binary", "original"):
            raise ConfigError(f"data.mask_target must be 'binary' or 'original', got {self.mask_target!r}")
        from trainables.feature_cache import parse_setting

        parse_setting(self.feature_cache)


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 2e-4
    weight_decay: float = 1e-3
    batch_size: int = 32  # per step; the effective batch is reached by gradient accumulation
    effective_batch_size: int = 32
    max_epochs: int = DEFAULT_MAX_EPOCHS
    min_epochs: int = 10
    early_stop_patience: int = 12  # epochs without val-loss improvement (min delta below)
    early_stop_min_delta: float = 1e-4
    plateau_factor: float = 0.2
    plateau_patience: int = 5
    bce_weight: float = 0.2
    precision: Precision = "auto"  # auto: bf16-mixed on CUDA with bf16 support, 16-mixed on older GPUs, 32 on CPU
    seed: int = 12345
    objective: Objective = "last_val_loss"  # what the sweep optimises; the original used the last val loss
    device: str = "auto"
    eval_original_size: bool = True  # also report test Dice/IoU with predictions resized to the image's size
    max_steps_per_epoch: int | None = None  # smoke tests only: truncate each epoch
    max_eval_batches: int | None = None  # smoke runs only: validate and test on the first N batches
    # Validations per epoch, evenly spaced, the last at the epoch's end (the original validated Cityscapes
    # twice: Lightning's val_check_interval 0.5). Each one counts for early stopping and the best state;
    # the LR scheduler steps once per epoch on the last one.
    val_checks_per_epoch: int = 1
    # Alternatives for other recipes (experiments/medvlsm_e2e.yaml): CosineAnnealingLR(T_max, eta_min)
    # stepped per epoch instead of ReduceLROnPlateau; early stopping on val Dice (mode max); gradient-norm
    # clipping (Lightning's gradient_clip_val; fp16 gradients are unscaled first); weight decay on every
    # parameter (torch's AdamW(model.parameters())) instead of weights only.
    scheduler: Scheduler = "plateau"
    cosine_t_max: int = 50
    cosine_eta_min: float = 0.0
    early_stop_on: EarlyStopOn = "val_loss"
    grad_clip_norm: float | None = None
    weight_decay_on: DecayOn = "weights"
    save_artifact: bool = True
    # Seconds between resumable checkpoints: 0 checkpoints every epoch; N skips an epoch's checkpoint until N
    # seconds passed since the last (a killed trial then redoes up to N seconds). Never changes a number:
    # a checkpoint only reads the state. The mini benchmark's epochs take about a second and its E2E
    # checkpoints tens of MB, so `mini.yaml` sets 30; epochs of real datasets take minutes.
    checkpoint_every_s: float = 0.0

    def __post_init__(self):
        checks = [
            (self.lr > 0 and math.isfinite(self.lr), "train.lr must be a positive number", self.lr),
            (self.weight_decay >= 0, "train.weight_decay must be >= 0", self.weight_decay),
            (self.batch_size >= 1, "train.batch_size must be >= 1", self.batch_size),
            (self.effective_batch_size >= self.batch_size,
             "train.effective_batch_size must be >= train.batch_size", self.effective_batch_size),
            (self.max_epochs >= 1, "train.max_epochs must be >= 1", self.max_epochs),
            (0 <= self.min_epochs <= self.max_epochs, "train.min_epochs must be in [0, max_epochs]", self.min_epochs),
            (0 < self.plateau_factor < 1, "train.plateau_factor must be in (0, 1)", self.plateau_factor),
            (self.bce_weight >= 0, "train.bce_weight must be >= 0", self.bce_weight),
            (self.val_checks_per_epoch >= 1, "train.val_checks_per_epoch must be >= 1", self.val_checks_per_epoch),
            (self.scheduler in ("plateau", "cosine"), "train.scheduler must be 'plateau' or 'cosine'", self.scheduler),
            (self.cosine_t_max >= 1, "train.cosine_t_max must be >= 1", self.cosine_t_max),
            (self.early_stop_on in ("val_loss", "val_dice"), "train.early_stop_on must be 'val_loss' or 'val_dice'",
             self.early_stop_on),
            (self.grad_clip_norm is None or self.grad_clip_norm > 0, "train.grad_clip_norm must be > 0 (or null)",
             self.grad_clip_norm),
            (self.weight_decay_on in ("weights", "all"), "train.weight_decay_on must be 'weights' or 'all'",
             self.weight_decay_on),
            (self.checkpoint_every_s >= 0, "train.checkpoint_every_s must be >= 0 (0: every epoch)",
             self.checkpoint_every_s),
            (self.max_eval_batches is None or self.max_eval_batches >= 1,
             "train.max_eval_batches must be >= 1 (or null for whole splits)", self.max_eval_batches),
        ]
        for ok, msg, value in checks:
            if not ok:
                raise ConfigError(f"{msg}, got {value!r}")
        if self.effective_batch_size % self.batch_size:
            raise ConfigError(
                f"train.effective_batch_size ({self.effective_batch_size}) must be a multiple of "
                f"train.batch_size ({self.batch_size}) so every optimizer step sees the same number of images"
            )

    @property
    def accumulate(self) -> int:
        return self.effective_batch_size // self.batch_size


@dataclass(frozen=True)
class TrialConfig:
    model: Any  # trainables.model.ModelConfig
    data: DataConfig
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, d: dict) -> "TrialConfig":
        from trainables.model import ModelConfig

        unknown = sorted(set(d) - {"model", "data", "train"})
        if unknown:
            raise ConfigError(f"trial config: unknown key(s) {unknown}; allowed: model, data, train")
        return cls(
            model=from_dict(ModelConfig, d.get("model"), where="model"),
            data=from_dict(DataConfig, d.get("data"), where="data"),
            train=from_dict(TrainConfig, d.get("train"), where="train"),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class TrialDiverged(RuntimeError):
    """A NaN/inf loss: the trial stops and records where it happened (`epoch`, 0-based)."""

    def __init__(self, message: str, epoch: int | None = None):
        super().__init__(message)
        self.epoch = epoch


# ----------------------------------------------------------------------------------------------------------
# helpers


def resolve_device(train: TrainConfig) -> torch.device:
    if train.device != "auto":
        return torch.device(train.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(train: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a GradScaler is needed)."""
    p = train.precision
    if device.type != "cuda":
        if p in ("auto", "32"):
            return None, False
        # CPU autocast runs bf16 and fp16, and the CPU GradScaler scales fp16 losses: slow, but the same code
        # a GPU runs, so tests and `run --smoke` on CPU cover it.
        if p not in _CPU_AMP_WARNED:
            _CPU_AMP_WARNED.add(p)
            warnings.warn(f"train.precision {p} on CPU is for testing: autocast on CPU is slower than fp32",
                          stacklevel=2)
        return (torch.bfloat16, False) if p == "bf16-mixed" else (torch.float16, True)
    if p == "auto":
        p = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if p == "bf16-mixed":
        return torch.bfloat16, False
    if p == "16-mixed":
        return torch.float16, True  # fp16 needs loss scaling, as in the original's Lightning `16-mixed`
    return None, False


def reset_peak_rss() -> None:
    """Restart the process's peak-RSS counter (Linux: "5" to /proc/self/clear_refs), so a reused worker
    reports the peak of this trial, not of every trial it ran before."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    """Peak resident memory of this process since `reset_peak_rss` (VmHWM), in MiB; NaN where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state_tensors(model) -> list[tuple[str, torch.Tensor]]:
    # Trainable parameters, plus the buffers that move with them (E2E BatchNorm statistics) when the
    # model says so: the best-epoch state must restore both, or the statistics of the last epoch would be
    # paired with the weights of the best one.
    if hasattr(model, "named_state_tensors"):
        return model.named_state_tensors()
    return list(model.named_trainable_parameters())


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in _state_tensors(model)}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(_state_tensors(model))
    if set(params) != set(state):
        raise RuntimeError(
            f"checkpoint does not match the model: missing {sorted(set(params) - set(state))[:5]}, "
            f"unexpected {sorted(set(state) - set(params))[:5]}"
        )
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state[n])


def make_loader(dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int):
    # A generator per loader makes the shuffle order a function of (seed, epoch) — see `set_epoch_seed` —
    # so a resumed trial sees exactly the batches an uninterrupted one would.
    g = torch.Generator()
    g.manual_seed(seed)
    if num_workers > 0 and hasattr(dataset, "preload"):
        # Decode and resize every sample once in this process before workers fork, so they inherit the
        # cache instead of each decoding JPEGs again every epoch.
        dataset.preload()
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False, num_workers=num_workers,
        collate_fn=collate, generator=g, persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def collate(samples: list[dict]) -> dict:
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "mask": torch.stack([s["mask"] for s in samples]),
        "prompt": [s["prompt"] for s in samples],
        "original_size": [tuple(int(v) for v in s["original_size"]) for s in samples],
        "index": [s.get("index", -1) for s in samples],
        "image_id": [s.get("image_id") for s in samples],  # set for un-augmented images (feature cache)
    }


@functools.lru_cache(maxsize=8)
def _pixel_stats(device: torch.device, mean: tuple, std: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per (device, statistics): a fresh tensor every step would be a host->device copy per step.
    mean_255 = torch.tensor(mean, dtype=torch.float32).mul(255).view(1, -1, 1, 1).to(device)
    inv_std_255 = torch.tensor(std, dtype=torch.float32).mul(255).reciprocal().view(1, -1, 1, 1).to(device)
    return mean_255, inv_std_255


def device_images(images: torch.Tensor, device: torch.device, mean, std) -> torch.Tensor:
    """A batch of images on `device`, ready for the model: uint8 (N, 3, S, S) are normalised there as
    albumentations' Normalize does, (x - 255 mean) / (255 std); float batches are taken as already normalised.
    """
    if images.dtype == torch.uint8:
        mean_255, inv_std_255 = _pixel_stats(torch.device(device), tuple(mean), tuple(std))
        # In place on the fresh float copy: one float32 batch allocated instead of three (on CPU, 20 ms
        # instead of 56 ms for 32 x 352 px).
        return to_device(images, device).float().sub_(mean_255).mul_(inv_std_255)
    if not images.is_floating_point():
        raise TypeError(f"batch images must be uint8 (to be normalised) or float (normalised), got {images.dtype}")
    return to_device(images, device)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host->device copy that never makes the host wait: a copy from pageable memory waits for all the
    GPU work queued before it (a hidden sync per step), so CPU tensors are staged in pinned memory first.
    (DataLoader batches are already pinned; PyTorch keeps the pinned block alive until the copy is done.)"""
    if torch.device(device).type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


# Tokenized batches already on the device, per model and (device, prompts): a one-class dataset tokenizes and
# copies once per trial instead of every step. Bounded, as list-valued prompts (CAMUS) make many keys.
_TOKENS: "weakref.WeakKeyDictionary[Any, collections.OrderedDict]" = weakref.WeakKeyDictionary()
_TOKENS_PER_MODEL = 64


def device_tokens(model, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """`model.tokenize_batch(prompts)` on `device` (the distinct prompts and each image's `text_index`)."""
    cache = _TOKENS.setdefault(model, collections.OrderedDict())
    key = (str(device), tuple(prompts))
    tokens = cache.get(key)
    if tokens is None:
        tokens = cache[key] = {k: to_device(v, device) for k, v in model.tokenize_batch(list(prompts)).items()}
        if len(cache) > _TOKENS_PER_MODEL:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return tokens


def forward_batch(model, batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, float mask) of a collated batch; uint8 images are normalised on the device, and the text
    encoder runs once per distinct prompt of the batch (`text_index` maps images to them)."""
    images = device_images(batch["image"], device, model.spec.mean, model.spec.std)
    cache = getattr(model, "feature_cache", None)  # a trainables.feature_cache.Session, set by `fit`
    side = None if cache is None else cache.image_side(model, images, batch.get("image_id"))
    logits = model(images, **device_tokens(model, batch["prompt"], device),
                   **({} if side is None else {"image_side": side}))
    return logits, to_device(batch["mask"], device).float()


def mask_targets(mask: torch.Tensor, mode: str = "binary") -> tuple[torch.Tensor, torch.Tensor]:
    """(loss target, metric target) of a batch's float mask: {0,1} masks serve both; grey 0..255 masks
    (`data.mask_target: original`) give grey / 255 for the loss and grey == 255 for the metrics."""
    if mode == "original":
        return mask / 255, (mask == 255).float()
    return mask, mask


@torch.no_grad()
def evaluate(model, loader, device, amp_dtype, bce_weight: float, dataset=None,
             original_size: bool = False, max_batches: int | None = None, mask_target: str = "binary") -> dict[str, float]:
    """Loss, Dice and IoU over a whole split (or its first `max_batches`); optionally also at each image's
    original resolution. `images` is how many were evaluated."""
    model.eval()
    metrics, metrics_orig = SegMetrics(device), SegMetrics(device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    n = 0
    for k, batch in enumerate(loader):
        if max_batches is not None and k >= max_batches:
            break
        with _autocast(device, amp_dtype):
            logits, mask = forward_batch(model, batch, device)
        mask, metric_mask = mask_targets(mask, mask_target)
        loss_sum += dice_bce_loss(logits, mask, bce_weight).double() * len(mask)
        n += len(mask)
        metrics.update_from_logits(logits, metric_mask)
        if original_size and dataset is not None and hasattr(dataset, "original_mask"):
            probs = torch.sigmoid(logits.float())
            for i, (h, w) in enumerate(batch["original_size"]):
                # The original's offline script resized sigmoid maps bicubically to the mask's size.
                p = F.interpolate(probs[i : i + 1], size=(h, w), mode="bicubic", align_corners=False)
                gt = torch.as_tensor(dataset.original_mask(batch["index"][i]), device=device)
                metrics_orig.update(p >= 0.5, gt.reshape(1, 1, h, w) > 0.5)
    out = {"loss": float(loss_sum) / max(n, 1), **metrics.compute(), "images": n}
    if original_size:
        orig = metrics_orig.compute() if float(metrics_orig.count) else {"dice": float("nan"), "iou": float("nan")}
        out.update(dice_orig=orig["dice"], iou_orig=orig["iou"])
    return out


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def build_datasets(cfg: TrialConfig, spec) -> dict[str, Any]:
    from trainables.data import build_dataset

    # uint8 samples: a quarter of the bytes through the DataLoader and the host->device copy, and no
    # per-sample Normalize on the CPU; `forward_batch` normalises on the device with the same spec.mean/std.
    return {
        split: build_dataset(cfg.data.dataset, cfg.data.root, split, spec.image_size, spec.mean, spec.std,
                             augment=(split == "train" and cfg.data.augment), cache=cfg.data.cache, normalize=False,
                             seed=cfg.train.seed, grey_masks=cfg.data.mask_target == "original",
                             resize=cfg.data.resize, prompt_level=cfg.data.prompt_level,
                             prompt_full_stop=cfg.data.prompt_full_stop)
        for split in ("train", "val", "test")
    }


# ----------------------------------------------------------------------------------------------------------
# the loop

Report = Callable[[dict, "str | None"], None]  # (metrics, directory holding a checkpoint or None)


def fit(cfg: TrialConfig, report: Report, resume_dir: str | None = None, artifact_dir: str | None = None,
        model=None, datasets: dict | None = None) -> dict:
    """Train, validate every epoch, test the best-val-Dice state; returns the final metrics.

    `report(metrics, ckpt_dir)` is called once per epoch: with a directory holding the resumable state (copy
    it before returning: the directory is deleted afterwards) after every epoch but the last (or None when
    `train.checkpoint_every_s` has not passed since the last checkpoint); the last
    epoch's metrics go with the final ones (test scores, status) in one last report, so each epoch is
    reported exactly once. That report's directory holds only what a finished trial needs: the artifact
    and FINAL_FILE (no training state: a finished trial is never trained again), or it is None without
    `train.save_artifact`.
    `model`/`datasets` may be injected (tests, benchmarks); by default they are built from `cfg`.
    With `train.save_artifact`, the final report's directory holds the tuned-prompt artifact in
    `artifact/`; `artifact_dir` writes another copy there (for callers outside Ray Tune).
    """
    t_start = time.time()
    tc = cfg.train
    device = resolve_device(tc)
    amp_dtype, use_scaler = resolve_precision(tc, device)
    seed_everything(tc.seed)  # same seed for every trial, as the original: equal J gives equal learner init

    if model is None:
        from trainables.model import build_model

        model = build_model(cfg.model)
    model.to(device)
    features = feature_cache.attach(model, cfg.data.feature_cache, device, amp_dtype)
    datasets = datasets if datasets is not None else build_datasets(cfg, model.spec)
    if cfg.data.cache:
        # Decode every split now, into the cache training reads from anyway: a corrupt test image fails
        # the trial in seconds, naming the file, instead of after the last epoch.
        for split in ("train", "val", "test"):
            if hasattr(datasets[split], "preload"):
                datasets[split].preload()
    train_loader = make_loader(datasets["train"], tc.batch_size, True, tc.seed, cfg.data.num_workers)
    val_loader = make_loader(datasets["val"], tc.batch_size, False, tc.seed, cfg.data.num_workers)
    test_loader = make_loader(datasets["test"], tc.batch_size, False, tc.seed, cfg.data.num_workers)
    trainable_params = sum(p.numel() for _, p in model.named_trainable_parameters())

    groups = model.param_groups(tc.weight_decay)
    if tc.weight_decay_on == "all":
        groups = [{"params": [p for g in groups for p in g["params"]], "weight_decay": tc.weight_decay}]
    optimizer = torch.optim.AdamW(groups, lr=tc.lr, fused=device.type == "cuda")
    if tc.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=tc.cosine_t_max,
                                                               eta_min=tc.cosine_eta_min)
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=tc.plateau_factor, patience=tc.plateau_patience)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    last_epoch: dict = {}  # the metrics of the last epoch trained here, reported with the final ones
    last_checkpoint = time.time()
    state = {"epoch": -1, "best_val_dice": -1.0, "best_epoch": -1, "best_state": None,
             "best_val_loss": math.inf, "bad_epochs": 0, "last_val_loss": math.inf}
    if resume_dir is not None:
        ck = torch.load(Path(resume_dir) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        load_trainable_state(model, ck["trainable"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        state = ck["loop"]
        set_rng_state(ck["rng"])

    def save_state(directory: str) -> None:
        torch.save({"trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                    "loop": state, "rng": rng_state()}, Path(directory) / CHECKPOINT_FILE)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reset_peak_rss()

    def validate(epoch: int) -> dict:
        val = evaluate(model, val_loader, device, amp_dtype, tc.bce_weight, max_batches=tc.max_eval_batches,
                       mask_target=cfg.data.mask_target)
        if val["dice"] > state["best_val_dice"]:  # the original's ModelCheckpoint(monitor=val_dice, max)
            state.update(best_val_dice=val["dice"], best_epoch=epoch, best_state=trainable_state(model))
        if tc.early_stop_on == "val_dice":
            improved = val["dice"] > state.get("es_best_dice", -math.inf) + tc.early_stop_min_delta
            if improved:
                state["es_best_dice"] = val["dice"]
            state["best_val_loss"] = min(state["best_val_loss"], val["loss"])
        else:
            improved = val["loss"] < state["best_val_loss"] - tc.early_stop_min_delta
            if improved:
                state["best_val_loss"] = val["loss"]
        # Counts validations: half-epochs with two checks per epoch, as Lightning's patience did.
        state["bad_epochs"] = 0 if improved else state["bad_epochs"] + 1
        state["last_val_loss"] = val["loss"]
        return val

    n_batches = len(train_loader)
    if tc.max_steps_per_epoch is not None:
        n_batches = min(n_batches, tc.max_steps_per_epoch * tc.accumulate)
    checks = tc.val_checks_per_epoch
    mid_checks = {max(1, n_batches * k // checks) for k in range(1, checks)} - {n_batches}  # after batch i+1
    step = 0
    for epoch in range(state["epoch"] + 1, tc.max_epochs):
        if epoch >= tc.min_epochs and state["bad_epochs"] >= tc.early_stop_patience:
            break  # early stopping (checked here too so a resumed trial stops where it would have)
        t0 = time.time()
        model.train()  # the frozen VLSM stays in eval mode (PromptedVLSM.train takes care of it)
        train_loader.generator.manual_seed(tc.seed * 1000 + epoch)
        if hasattr(datasets["train"], "set_epoch"):
            datasets["train"].set_epoch(epoch)  # reproducible augmentation per epoch, also after resume
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        first_bad = torch.full((), -1, device=device, dtype=torch.long)
        n_images = 0
        steps_before = step
        mid_val_seconds = 0.0
        pending = 0  # micro-batches whose gradients wait for the next optimizer step
        optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(train_loader):
            if tc.max_steps_per_epoch is not None and i >= tc.max_steps_per_epoch * tc.accumulate:
                break
            with _autocast(device, amp_dtype):
                logits, mask = forward_batch(model, batch, device)
                loss = dice_bce_loss(logits, mask_targets(mask, cfg.data.mask_target)[0], tc.bce_weight)
            # Remember the first non-finite step on the device; reading it every step would be a host sync
            # that stalls the GPU. On CPU there is nothing to stall, so stop at once.
            bad = ~torch.isfinite(loss.detach())
            first_bad = torch.where(bad & (first_bad < 0), step, first_bad)
            if device.type != "cuda" and bool(bad):
                _diverged(epoch, int(first_bad), optimizer, loss)
            scaler.scale(loss / tc.accumulate).backward()
            pending += 1
            if pending == tc.accumulate:
                _optimizer_step(scaler, optimizer, tc.grad_clip_norm)
                pending = 0
                step += 1
            loss_sum += loss.detach().double() * len(mask)
            n_images += len(mask)
            if i + 1 in mid_checks:
                t_mid = time.time()
                validate(epoch)
                model.train()
                mid_val_seconds += time.time() - t_mid
        # An incomplete last group still steps; a complete one already did. Counting micro-batches, not
        # images, matters when the last batch is short: stepping again on empty gradients is a no-op in
        # fp32 but makes the fp16 GradScaler raise "No inf checks were recorded for this optimizer".
        if pending:
            _optimizer_step(scaler, optimizer, tc.grad_clip_norm)
            step += 1
        if int(first_bad) >= 0:  # one sync per epoch on the GPU
            _diverged(epoch, int(first_bad), optimizer, loss_sum)
        train_seconds = time.time() - t0 - mid_val_seconds
        epoch_steps = step - steps_before

        t_val = time.time()
        val = validate(epoch)
        val_seconds = time.time() - t_val
        if tc.scheduler == "plateau":
            scheduler.step(val["loss"])
        else:
            scheduler.step()
        state["epoch"] = epoch

        last_epoch = {
            "epoch": epoch,
            "train_loss": float(loss_sum) / max(n_images, 1),
            "val_loss": val["loss"], "val_dice": val["dice"], "val_iou": val["iou"],
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.time() - t0,
            "images_per_s": n_images / max(train_seconds, 1e-9),
            "objective": _objective(tc, state),
            # what `run --smoke` turns into seconds per step and per image
            "train_seconds": train_seconds, "train_images": n_images, "optimizer_steps": epoch_steps,
            "val_seconds": val_seconds, "val_images": val["images"],
            **(features.metrics() if features else {}),  # this epoch's train + val lookups
        }
        if epoch + 1 >= tc.max_epochs or (epoch + 1 >= tc.min_epochs and state["bad_epochs"] >= tc.early_stop_patience):
            break  # the last epoch (the two conditions that end the loop): reported with the final result
        if time.time() - last_checkpoint >= tc.checkpoint_every_s:
            with tempfile.TemporaryDirectory() as d:
                save_state(d)
                report(last_epoch, d)
            last_checkpoint = time.time()
        else:
            report(last_epoch, None)
        last_epoch = {}

    # Test the best-val-Dice state, as the original's trainer.test(ckpt_path="best").
    if state["best_state"] is not None:
        load_trainable_state(model, state["best_state"])
    test = evaluate(model, test_loader, device, amp_dtype, tc.bce_weight, datasets["test"],
                    original_size=tc.eval_original_size, max_batches=tc.max_eval_batches,
                    mask_target=cfg.data.mask_target)
    data = _artifact_data(cfg, datasets["test"])
    if artifact_dir is not None and tc.save_artifact:
        model.save_artifact(artifact_dir, data=data)
        _preview(model, datasets["test"], device, Path(artifact_dir))
    final = {
        **last_epoch,
        "epoch": state["epoch"],
        "objective": _objective(tc, state),
        "val_loss": state["last_val_loss"],
        "best_val_dice": state["best_val_dice"], "best_epoch": state["best_epoch"],
        "test_loss": test["loss"], "test_dice": test["dice"], "test_iou": test["iou"],
        "test_dice_orig": test.get("dice_orig", float("nan")), "test_iou_orig": test.get("iou_orig", float("nan")),
        "epochs_run": state["epoch"] + 1,
        "trainable_params": trainable_params,
        "peak_gpu_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0,
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
        "peak_rss_mb": peak_rss_mb(),
        "trial_seconds": time.time() - t_start,
        "status": STATUS_OK, "error": "",
    }
    if features:
        final.update(features.metrics(), feature_cache_hit_rate=features.trial_hit_rate())
    if not tc.save_artifact:
        report(final, None)
        return final
    # The tuned prompt travels as the trial's last checkpoint, `<checkpoint>/artifact`: Ray persists
    # checkpoints to the run's storage, whereas files written to a trial's working directory are lost
    # when its worker is reused. No training state goes along (for E2E that would be the optimizer's
    # moments and the best-epoch copy, three times the model): a trial restarted from this checkpoint
    # only reports FINAL_FILE again (`tune_trainable`).
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / FINAL_FILE).write_text(json.dumps(final, default=_json_default))
        model.save_artifact(Path(d) / CHECKPOINT_ARTIFACT, data=data)
        _preview(model, datasets["test"], device, Path(d) / CHECKPOINT_ARTIFACT)
        report(final, d)
    return final


def _json_default(v):
    return v.item() if hasattr(v, "item") else str(v)


def _optimizer_step(scaler, optimizer, clip_norm: float | None = None) -> None:
    if clip_norm is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones (a no-op without fp16)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
    scaler.step(optimizer)  # with fp16, skipped (and the scale lowered) when a gradient is inf/NaN
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def _preview(model, test_set, device, artifact: Path) -> None:
    """`artifact/preview.png` (trainables.preview); a picture that cannot be drawn never fails the trial."""
    from trainables.preview import PREVIEW_FILE, save_preview

    try:
        save_preview(model, test_set, device, artifact / PREVIEW_FILE)
    except Exception as e:  # noqa: BLE001
        logging.getLogger("tunevlseg.trial").warning("no preview.png: %s: %s", type(e).__name__, e)


def _artifact_data(cfg: TrialConfig, test_set) -> dict:
    """What the artifact records of its data: `tunevlseg predict` uses the prompt when none is given."""
    # The most frequent (one-class datasets: the only one); ties go to the first in split order, so the
    # choice does not depend on string hashing.
    counts = collections.Counter(getattr(test_set, "prompts", None) or [])
    return {"dataset": str(cfg.data.dataset), "prompt": counts.most_common(1)[0][0] if counts else None}


def _diverged(epoch: int, step: int, optimizer, loss: torch.Tensor):
    lr = optimizer.param_groups[0]["lr"]
    raise TrialDiverged(f"diverged at epoch {epoch}, step {step}, lr {lr:.2g}: loss is {loss.item()}", epoch=epoch)


def _objective(tc: TrainConfig, state: dict) -> float:
    if tc.objective == "last_val_loss":
        return state["last_val_loss"]
    if tc.objective == "best_val_loss":
        return state["best_val_loss"]
    return -state["best_val_dice"]  # the sweep minimises, so Dice is negated


# ----------------------------------------------------------------------------------------------------------
# Ray Tune shell


def tune_trainable(config: dict) -> None:
    """Ray Tune function trainable. `config["trial"]` is the nested trial config (see TrialConfig).

    Uses only `ray.tune.*` calls: in Ray 2.60 the `ray.train.*` ones raise inside Tune trainables.
    A NaN/inf loss ends the trial as a result with status "diverged"; any other failure is reported with
    status "error" and its message (so it lands in Parquet and MLflow) and re-raised so Tune marks the trial
    ERROR and the sweep goes on.
    """
    from ray import tune

    cfg = TrialConfig.from_dict(config["trial"])

    def report(metrics: dict, ckpt_dir: str | None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None)

    from trainables.restore import restorable_checkpoint

    ckpt = restorable_checkpoint(tune.get_checkpoint())
    with ckpt.as_directory() if ckpt else contextlib.nullcontext() as resume_dir:
        if resume_dir is not None and (Path(resume_dir) / FINAL_FILE).is_file():
            # Restored from its final checkpoint (the driver stopped between the trial's end and Tune's
            # next snapshot): the trial is done; its result is reported again, its checkpoint stays the last.
            tune.report(json.loads((Path(resume_dir) / FINAL_FILE).read_text()))
            return
        try:
            fit(cfg, report, resume_dir=resume_dir)
        except TrialDiverged as e:
            # A diverged trial is a result, not a crash: TPE learns that this region is bad.
            tune.report({"objective": float("inf"), "status": STATUS_DIVERGED, "error": str(e),
                         **({"epochs_run": e.epoch + 1} if e.epoch is not None else {})})
        except (DataError, ConfigError) as e:
            # Permanent: a retry (max_failures) would fail the same way after loading the model again. The
            # trial ends as a result with status "error"; fix the data and rerun.
            tune.report({"objective": float("inf"), "status": STATUS_ERROR, "error": _explain(e)})
        except Exception as e:  # noqa: BLE001 - recorded, then re-raised so Tune marks the trial ERROR
            tune.report({"objective": float("inf"), "status": STATUS_ERROR, "error": _explain(e)})
            raise
        finally:
            if torch.cuda.is_available():
                # A reused worker waits for its next trial holding the allocator's cached blocks; trials
                # packed on the same GPU (fractional resources) need them in the meantime.
                torch.cuda.empty_cache()


def _explain(e: BaseException) -> str:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return ("CUDA out of memory: lower train.batch_size and keep train.effective_batch_size (gradient "
                f"accumulation makes up the difference), or give the trial a larger GPU share. ({e})")
    return f"{type(e).__name__}: {e}"
