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
import math
import random
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from trainables.config import ConfigError, from_dict
from trainables.losses import dice_bce_loss
from trainables.metrics import SegMetrics
from trainables.protocol import CHECKPOINT_ARTIFACT, DEFAULT_MAX_EPOCHS, STATUS_DIVERGED, STATUS_ERROR, STATUS_OK

Precision = Literal["auto", "32", "bf16-mixed", "16-mixed"]
Objective = Literal["last_val_loss", "best_val_loss", "best_val_dice"]
CHECKPOINT_FILE = "trial_state.pt"


@dataclass(frozen=True)
class DataConfig:
    dataset: str  # a data card name (datasets/<name>.yaml) or a path to a card
    root: str  # absolute path of the dataset on every node
    cache: bool = True  # keep decoded, resized samples in memory (the medical sets are small)
    num_workers: int = 0

    def __post_init__(self):
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")


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
    save_artifact: bool = True

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
    """A NaN/inf loss: the trial stops and records where it happened."""


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
        if p == "16-mixed":
            raise ConfigError("train.precision '16-mixed' needs a CUDA device; use '32' or 'bf16-mixed' on CPU")
        return (torch.bfloat16, False) if p == "bf16-mixed" else (None, False)
    if p == "auto":
        p = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if p == "bf16-mixed":
        return torch.bfloat16, False
    if p == "16-mixed":
        return torch.float16, True  # fp16 needs loss scaling, as in the original's Lightning `16-mixed`
    return None, False


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
    logits = model(device_images(batch["image"], device, model.spec.mean, model.spec.std),
                   **device_tokens(model, batch["prompt"], device))
    return logits, to_device(batch["mask"], device).float()


@torch.no_grad()
def evaluate(model, loader, device, amp_dtype, bce_weight: float, dataset=None,
             original_size: bool = False) -> dict[str, float]:
    """Loss, Dice and IoU over a whole split; optionally also at each image's original resolution."""
    model.eval()
    metrics, metrics_orig = SegMetrics(device), SegMetrics(device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    n = 0
    for batch in loader:
        with _autocast(device, amp_dtype):
            logits, mask = forward_batch(model, batch, device)
        loss_sum += dice_bce_loss(logits, mask, bce_weight).double() * len(mask)
        n += len(mask)
        metrics.update_from_logits(logits, mask)
        if original_size and dataset is not None and hasattr(dataset, "original_mask"):
            probs = torch.sigmoid(logits.float())
            for i, (h, w) in enumerate(batch["original_size"]):
                # The original's offline script resized sigmoid maps bicubically to the mask's size.
                p = F.interpolate(probs[i : i + 1], size=(h, w), mode="bicubic", align_corners=False)
                gt = torch.as_tensor(dataset.original_mask(batch["index"][i]), device=device)
                metrics_orig.update(p >= 0.5, gt.reshape(1, 1, h, w) > 0.5)
    out = {"loss": float(loss_sum) / max(n, 1), **metrics.compute()}
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
                             augment=(split == "train"), cache=cfg.data.cache, normalize=False, seed=cfg.train.seed)
        for split in ("train", "val", "test")
    }


# ----------------------------------------------------------------------------------------------------------
# the loop

Report = Callable[[dict, "str | None"], None]  # (metrics, directory holding a checkpoint or None)


def fit(cfg: TrialConfig, report: Report, resume_dir: str | None = None, artifact_dir: str | None = None,
        model=None, datasets: dict | None = None) -> dict:
    """Train, validate every epoch, test the best-val-Dice state; returns the final metrics.

    `report(metrics, ckpt_dir)` is called once per epoch with a directory holding the resumable state
    (copy it before returning: the directory is deleted afterwards) and once at the end without one.
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
    datasets = datasets if datasets is not None else build_datasets(cfg, model.spec)
    train_loader = make_loader(datasets["train"], tc.batch_size, True, tc.seed, cfg.data.num_workers)
    val_loader = make_loader(datasets["val"], tc.batch_size, False, tc.seed, cfg.data.num_workers)
    test_loader = make_loader(datasets["test"], tc.batch_size, False, tc.seed, cfg.data.num_workers)
    trainable_params = sum(p.numel() for _, p in model.named_trainable_parameters())

    optimizer = torch.optim.AdamW(model.param_groups(tc.weight_decay), lr=tc.lr,
                                  fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=tc.plateau_factor, patience=tc.plateau_patience)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

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
        optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(train_loader):
            if tc.max_steps_per_epoch is not None and i >= tc.max_steps_per_epoch * tc.accumulate:
                break
            with _autocast(device, amp_dtype):
                logits, mask = forward_batch(model, batch, device)
                loss = dice_bce_loss(logits, mask, tc.bce_weight)
            # Remember the first non-finite step on the device; reading it every step would be a host sync
            # that stalls the GPU. On CPU there is nothing to stall, so stop at once.
            bad = ~torch.isfinite(loss.detach())
            first_bad = torch.where(bad & (first_bad < 0), step, first_bad)
            if device.type != "cuda" and bool(bad):
                _diverged(epoch, int(first_bad), optimizer, loss)
            scaler.scale(loss / tc.accumulate).backward()
            if (i + 1) % tc.accumulate == 0:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
            loss_sum += loss.detach().double() * len(mask)
            n_images += len(mask)
        if n_images % (tc.batch_size * tc.accumulate):  # a partial accumulation at the end still counts
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
        if int(first_bad) >= 0:  # one sync per epoch on the GPU
            _diverged(epoch, int(first_bad), optimizer, loss_sum)
        train_seconds = time.time() - t0

        val = evaluate(model, val_loader, device, amp_dtype, tc.bce_weight)
        scheduler.step(val["loss"])
        if val["dice"] > state["best_val_dice"]:  # the original's ModelCheckpoint(monitor=val_dice, max)
            state.update(best_val_dice=val["dice"], best_epoch=epoch, best_state=trainable_state(model))
        if val["loss"] < state["best_val_loss"] - tc.early_stop_min_delta:
            state.update(best_val_loss=val["loss"], bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        state.update(epoch=epoch, last_val_loss=val["loss"])

        metrics = {
            "epoch": epoch,
            "train_loss": float(loss_sum) / max(n_images, 1),
            "val_loss": val["loss"], "val_dice": val["dice"], "val_iou": val["iou"],
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.time() - t0,
            "images_per_s": n_images / max(train_seconds, 1e-9),
            "objective": _objective(tc, state),
        }
        with tempfile.TemporaryDirectory() as d:
            save_state(d)
            report(metrics, d)

    # Test the best-val-Dice state, as the original's trainer.test(ckpt_path="best").
    if state["best_state"] is not None:
        load_trainable_state(model, state["best_state"])
    test = evaluate(model, test_loader, device, amp_dtype, tc.bce_weight, datasets["test"],
                    original_size=tc.eval_original_size)
    data = _artifact_data(cfg, datasets["test"])
    if artifact_dir is not None and tc.save_artifact:
        model.save_artifact(artifact_dir, data=data)
    final = {
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
        "trial_seconds": time.time() - t_start,
        "status": STATUS_OK, "error": "",
    }
    if not tc.save_artifact:
        report(final, None)
        return final
    # The tuned prompt travels as the trial's last checkpoint, `<checkpoint>/artifact`: Ray persists
    # checkpoints to the run's storage, whereas files written to a trial's working directory are lost
    # when its worker is reused. The loop state goes along, so a trial restarted from this checkpoint
    # goes straight to the test again.
    with tempfile.TemporaryDirectory() as d:
        save_state(d)
        model.save_artifact(Path(d) / CHECKPOINT_ARTIFACT, data=data)
        report(final, d)
    return final


def _artifact_data(cfg: TrialConfig, test_set) -> dict:
    """What the artifact records of its data: `tunevlseg predict` uses the prompt when none is given."""
    # The most frequent (one-class datasets: the only one); ties go to the first in split order, so the
    # choice does not depend on string hashing.
    counts = collections.Counter(getattr(test_set, "prompts", None) or [])
    return {"dataset": str(cfg.data.dataset), "prompt": counts.most_common(1)[0][0] if counts else None}


def _diverged(epoch: int, step: int, optimizer, loss: torch.Tensor):
    lr = optimizer.param_groups[0]["lr"]
    raise TrialDiverged(f"diverged at epoch {epoch}, step {step}, lr {lr:.2g}: loss is {loss.item()}")


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

    ckpt = tune.get_checkpoint()
    with ckpt.as_directory() if ckpt else contextlib.nullcontext() as resume_dir:
        try:
            fit(cfg, report, resume_dir=resume_dir)
        except TrialDiverged as e:
            # A diverged trial is a result, not a crash: TPE learns that this region is bad.
            tune.report({"objective": float("inf"), "status": STATUS_DIVERGED, "error": str(e)})
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
