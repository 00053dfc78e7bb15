"""The trial config: what one trial trains on and how (`TrialConfig` = model + data + train blocks). Torch-free.

The driver reads these dataclasses without importing the trial's torch code: `run --smoke` takes the training
defaults from `TrainConfig`, reseeding the default seed from `DEFAULT_SEED`. The `model` block's dataclass,
`trainables.model.ModelConfig`, sits with the model; `TrialConfig.from_dict` imports it when it parses one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from trainables.config import ConfigError, from_dict
from trainables.protocol import DEFAULT_MAX_EPOCHS

# The training seed of every trial without `train.seed` (the original's 12345); reseeds add k to it.
DEFAULT_SEED = 12345
GB = 1e9

Precision = Literal["auto", "32", "bf16-mixed", "16-mixed"]
MaskTarget = Literal["binary", "original"]
Scheduler = Literal["plateau", "cosine"]
EarlyStopOn = Literal["val_loss", "val_dice"]
DecayOn = Literal["weights", "all"]
Objective = Literal["last_val_loss", "best_val_loss", "best_val_dice"]


# How files become S x S (`data.resize`; trainables/data/transforms.py does it). Defined here, torch- and cv2-free,
# so that `plan` refuses an unknown value before any trial starts; the first is the default (the original's).
RESIZES = ("bicubic", "bilinear_antialias")
DEFAULT_RESIZE = RESIZES[0]


def check_resize(mode: str) -> str:
    if mode not in RESIZES:
        raise ConfigError(f"data.resize: unknown resize {mode!r}; allowed: {', '.join(RESIZES)}")
    return mode


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
    resize: str = DEFAULT_RESIZE
    # End every prompt with a full stop (TuneVLSeg's insert_stop_at_last); false: as the annotation files write
    # them, as medvlsm did ("polyp", and "" for p0).
    prompt_full_stop: bool = True

    def __post_init__(self):
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.mask_target not in ("binary", "original"):
            raise ConfigError(f"data.mask_target must be 'binary' or 'original', got {self.mask_target!r}")
        parse_feature_cache(self.feature_cache)
        check_resize(self.resize)


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
    seed: int = DEFAULT_SEED
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


def parse_feature_cache(value) -> float | str:
    """`data.feature_cache` -> "auto", "off" or a bound in bytes; a clear error otherwise."""
    if isinstance(value, bool):  # YAML 1.1 reads `off` / `on` as booleans
        return "auto" if value else "off"
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("auto", "off"):
            return text
        try:
            value = float(text.removesuffix("gb").strip())
        except ValueError:
            value = None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"data.feature_cache: expected auto, off or a size in GB >= 0 (e.g. 4 or 0.5), "
                          f"got {value!r}")
    return "off" if value == 0 else float(value) * GB
