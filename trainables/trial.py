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
import json
import logging
import math
import random
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from trainables import feature_cache
from trainables.batches import autocast, forward_batch, make_loader, mask_targets
from trainables.config import ConfigError
from trainables.data.readers import DataError
from trainables.losses import dice_bce_loss
from trainables.metrics import SegMetrics
from trainables.protocol import CHECKPOINT_ARTIFACT, FINAL_FILE, STATUS_DIVERGED, STATUS_ERROR, STATUS_OK
from trainables.trial_config import DEFAULT_RESIZE, DataConfig, TrainConfig, TrialConfig  # noqa: F401 - DataConfig: its public path too

CHECKPOINT_FILE = "trial_state.pt"
_CPU_AMP_WARNED: set[str] = set()  # mixed precisions already warned about on CPU in this process


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
        with autocast(device, amp_dtype):
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

    model, features, datasets = _model_and_data(cfg, device, amp_dtype, model, datasets)
    train_loader = make_loader(datasets["train"], tc.batch_size, True, tc.seed, cfg.data.num_workers)
    val_loader = make_loader(datasets["val"], tc.batch_size, False, tc.seed, cfg.data.num_workers)
    test_loader = make_loader(datasets["test"], tc.batch_size, False, tc.seed, cfg.data.num_workers)
    trainable_params = sum(p.numel() for _, p in model.named_trainable_parameters())
    optimizer, scheduler, scaler = _optimization(model, tc, device, use_scaler)
    state = _resume(resume_dir, model, optimizer, scheduler, scaler) if resume_dir is not None else _fresh_state()
    last_epoch: dict = {}  # the metrics of the last epoch trained here, reported with the final ones
    last_checkpoint = time.time()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reset_peak_rss()

    def validate(epoch: int) -> dict:
        return _validate(model, val_loader, device, amp_dtype, cfg, state, epoch)

    mid_checks = _mid_epoch_checks(len(train_loader), tc)  # after these batches (1-based), besides the epoch's end
    step = 0
    for epoch in range(state["epoch"] + 1, tc.max_epochs):
        if _patience_spent(tc, state, epochs_done=epoch):
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
            with autocast(device, amp_dtype):
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
        if epoch + 1 >= tc.max_epochs or _patience_spent(tc, state, epochs_done=epoch + 1):
            break  # the last epoch (the two conditions that end the loop): reported with the final result
        if time.time() - last_checkpoint >= tc.checkpoint_every_s:
            with tempfile.TemporaryDirectory() as d:
                _save_state(Path(d), model, optimizer, scheduler, scaler, state)
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
        **_resource_metrics(device, t_start),
        "status": STATUS_OK, "error": "",
    }
    if features:
        final.update(features.metrics(), feature_cache_hit_rate=features.trial_hit_rate())
    _report_final(final, report, model, data, datasets["test"], device, tc.save_artifact)
    return final


# ----------------------------------------------------------------------------------------------------------
# the loop's steps, in the order `fit` takes them


def _model_and_data(cfg: TrialConfig, device: torch.device, amp_dtype, model=None, datasets: dict | None = None):
    """(model on `device`, its feature-cache session or None, the three splits): built from `cfg` unless given."""
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
    return model, features, datasets


def _optimization(model, tc: TrainConfig, device: torch.device, use_scaler: bool):
    """(AdamW over the model's parameter groups, the LR scheduler, the fp16 GradScaler: a no-op unless used)."""
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
    return optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=use_scaler)


def _fresh_state() -> dict:
    """The loop's state: what a resumed trial needs besides the weights, optimizer, scheduler and RNGs."""
    return {"epoch": -1, "best_val_dice": -1.0, "best_epoch": -1, "best_state": None,
            "best_val_loss": math.inf, "bad_epochs": 0, "last_val_loss": math.inf}


def _resume(resume_dir: str, model, optimizer, scheduler, scaler) -> dict:
    """Load the state `_save_state` wrote into the model, optimizer, scheduler, scaler and RNGs; the loop's state."""
    ck = torch.load(Path(resume_dir) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    load_trainable_state(model, ck["trainable"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    scaler.load_state_dict(ck["scaler"])
    set_rng_state(ck["rng"])
    return ck["loop"]


def _save_state(directory: Path, model, optimizer, scheduler, scaler, state: dict) -> None:
    torch.save({"trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "loop": state, "rng": rng_state()}, directory / CHECKPOINT_FILE)


def _validate(model, loader, device: torch.device, amp_dtype, cfg: TrialConfig, state: dict, epoch: int) -> dict:
    """Evaluate on the validation split and update `state`: the best-val-Dice weights, early stopping."""
    tc = cfg.train
    val = evaluate(model, loader, device, amp_dtype, tc.bce_weight, max_batches=tc.max_eval_batches,
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


def _mid_epoch_checks(batches_per_epoch: int, tc: TrainConfig) -> set[int]:
    """The batch counts (1-based) after which an epoch validates besides its end (`train.val_checks_per_epoch`)."""
    n_batches = batches_per_epoch
    if tc.max_steps_per_epoch is not None:
        n_batches = min(n_batches, tc.max_steps_per_epoch * tc.accumulate)
    checks = tc.val_checks_per_epoch
    return {max(1, n_batches * k // checks) for k in range(1, checks)} - {n_batches}


def _patience_spent(tc: TrainConfig, state: dict, epochs_done: int) -> bool:
    """Early stopping: past `min_epochs`, and `early_stop_patience` validations without improvement."""
    return epochs_done >= tc.min_epochs and state["bad_epochs"] >= tc.early_stop_patience


def _resource_metrics(device: torch.device, t_start: float) -> dict:
    """What the trial used: peak GPU and host memory, the GPU's name, and its wall-clock seconds."""
    return {
        "peak_gpu_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0,
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
        "peak_rss_mb": peak_rss_mb(),
        "trial_seconds": time.time() - t_start,
    }


def _report_final(final: dict, report: Report, model, data: dict, test_set, device: torch.device,
                  save_artifact: bool) -> None:
    """The trial's last report: the final metrics, with the artifact as its checkpoint (`train.save_artifact`)."""
    if not save_artifact:
        report(final, None)
        return
    # The tuned prompt travels as the trial's last checkpoint, `<checkpoint>/artifact`: Ray persists
    # checkpoints to the run's storage, whereas files written to a trial's working directory are lost
    # when its worker is reused. No training state goes along (for E2E that would be the optimizer's
    # moments and the best-epoch copy, three times the model): a trial restarted from this checkpoint
    # only reports FINAL_FILE again (`tune_trainable`).
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / FINAL_FILE).write_text(json.dumps(final, default=_json_default))
        model.save_artifact(Path(d) / CHECKPOINT_ARTIFACT, data=data)
        _preview(model, test_set, device, Path(d) / CHECKPOINT_ARTIFACT)
        report(final, d)


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
    # the resize only where it is not the default, so the artifacts of every other trial stay as they were
    resize = {"resize": cfg.data.resize} if cfg.data.resize != DEFAULT_RESIZE else {}
    return {"dataset": str(cfg.data.dataset), "prompt": counts.most_common(1)[0][0] if counts else None, **resize}


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
