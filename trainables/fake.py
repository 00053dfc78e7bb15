"""A synthetic trainable for orchestration tests and benchmarks: no torch, no data, seconds per trial.

It reads the same trial config as `trainables.trial.tune_trainable` (`config["trial"]`, `config["cell_id"]`,
`config["trial_index"]`), sleeps briefly per "epoch" and reports the contract's metric names with values
that are a deterministic function of the hyperparameters (so TPE has something to learn and tests can
predict them). It checkpoints every epoch through `tune.Checkpoint` and resumes from `tune.get_checkpoint()`,
so a resumed trial is observable: its results carry `resumed_from` (first epoch run by this start) and
`starts` (how many times the trial has started).

Knobs, all under the trial config's `fake` section (set them in a spec's `fixed.fake` or via rules):
  epoch_seconds  sleep per epoch (default 0.05)
  jitter         epoch time varies by up to this fraction, deterministically per hyperparameters (0)
  fail_trials    trial indices (within a cell) that raise; fail_at_epoch: the epoch they raise at (1);
                 with fail_once: true they raise on their first start only (a retry succeeds)
  diverge_trials trial indices that report status "diverged" (objective +inf) instead of training
  log_dir        absolute directory: one line per trial start is appended to <cell_id>_<index>.log
  data_file      absolute path of a stand-in data file: unless it reads "ok", every trial ends at once with
                 status "error" (reported, not raised), as the real trainable ends on a corrupt image
  seed_noise     with `train.seed` set, quality moves by up to +-seed_noise/2, deterministically per seed
                 (0: the seed changes nothing), so reruns with further seeds (select.reseed) differ
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time

CHECKPOINT_FILE = "fake_state.json"


def quality(hp: dict) -> float:
    """A smooth 'true Dice' in (0, 1): best near lr 1e-3, better with deeper prompts."""
    lr = float(hp.get("lr", 1e-3))
    wd = float(hp.get("weight_decay", 1e-4))
    depth = int(hp.get("prompt_depth", 6))
    q = math.exp(-((math.log10(lr) + 3.0) ** 2) / 2.0) * (0.7 + 0.3 * depth / 11.0)
    q *= 1.0 - 0.1 * abs(math.log10(wd) + 4.0) / 3.0
    return max(0.01, min(0.99, q))


def _unit_hash(*parts) -> float:
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return int(h[:12], 16) / 16**12


def _searched(trial: dict) -> dict:
    """The hyperparameters as the trial sees them (from the nested config, like the real trainable)."""
    train, lc = trial.get("train", {}), trial.get("model", {}).get("learner_config", {})
    hp = {k: train[k] for k in ("lr", "weight_decay") if k in train}
    hp.update({k: v for k, v in lc.items() if not isinstance(v, (dict, list))})
    return hp


def fake_trainable(config: dict) -> None:
    from ray import tune

    trial = config["trial"]
    cell_id, index = config.get("cell_id", "cell"), int(config.get("trial_index", 0))
    train, fake = trial.get("train", {}), trial.get("fake", {})
    epochs = int(train.get("max_epochs", 3))
    hp = _searched(trial)
    q = quality(hp)
    if "seed" in train and float(fake.get("seed_noise", 0.0)):
        q = max(0.01, min(0.99, q + float(fake["seed_noise"]) * (_unit_hash("seed", train["seed"]) - 0.5)))
    seconds = float(fake.get("epoch_seconds", 0.05)) * (1.0 + float(fake.get("jitter", 0.0)) * _unit_hash(cell_id, hp))

    state = {"epoch": -1, "starts": 0, "history": []}
    from trainables.protocol import FINAL_FILE
    from trainables.restore import restorable_checkpoint

    ckpt = restorable_checkpoint(tune.get_checkpoint())
    if ckpt is not None:
        with ckpt.as_directory() as d:
            if os.path.isfile(os.path.join(d, FINAL_FILE)):  # finished: as the real trainable, report it again
                with open(os.path.join(d, FINAL_FILE)) as f:
                    tune.report(json.load(f))
                return
            with open(os.path.join(d, CHECKPOINT_FILE)) as f:
                state = json.load(f)
    state["starts"] += 1
    resumed_from = state["epoch"] + 1
    if fake.get("log_dir"):
        with open(os.path.join(fake["log_dir"], f"{cell_id}_{index}.log"), "a") as f:
            f.write(f"start {resumed_from}\n")
    t_start = time.time()

    def report(metrics: dict, with_checkpoint: bool, final: bool = False) -> None:
        metrics = {**metrics, "resumed_from": resumed_from, "starts": state["starts"]}
        if not with_checkpoint:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            # As the real trainable: the final checkpoint holds the final result only, no training state.
            with open(os.path.join(d, FINAL_FILE if final else CHECKPOINT_FILE), "w") as f:
                json.dump(metrics if final else state, f)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    if fake.get("data_file"):  # a permanent data error: reported, never retried under max_failures
        try:
            content = open(fake["data_file"]).read().strip()
        except OSError as e:
            content = str(e)
        if content != "ok":
            report({"objective": float("inf"), "status": "error",
                    "error": f"DataError: {fake['data_file']}: corrupt ({content[:40]!r})"}, False)
            return
    if index in fake.get("diverge_trials", []):
        report({"epoch": 0, "objective": float("inf"), "val_loss": float("nan"), "status": "diverged",
                "error": "loss became NaN at epoch 0 (synthetic)", "epochs_run": 1}, False)
        return
    last_epoch: dict = {}
    try:
        for epoch in range(resumed_from, epochs):
            if (index in fake.get("fail_trials", []) and epoch == int(fake.get("fail_at_epoch", 1))
                    and not (fake.get("fail_once") and state["starts"] > 1)):
                raise RuntimeError(f"synthetic failure in {cell_id} trial {index} at epoch {epoch}")
            t0 = time.time()
            time.sleep(seconds)
            dice = q * (1.0 - 0.5 ** (epoch + 1))
            val_loss = 1.0 - dice + 0.01 * _unit_hash(cell_id, index, epoch)
            state["epoch"] = epoch
            state["history"].append({"val_loss": val_loss, "val_dice": dice})
            # objective: the last-epoch val loss so far, per epoch as the real trainable reports it
            last_epoch = {"epoch": epoch, "train_loss": val_loss * 0.9, "val_loss": val_loss, "objective": val_loss,
                          "val_dice": dice, "val_iou": dice / (2.0 - dice), "lr": float(train.get("lr", 1e-3)),
                          "epoch_seconds": time.time() - t0,
                          "images_per_s": 100.0 / max(time.time() - t0, 1e-6)}
            if epoch + 1 < epochs:  # the last epoch is reported with the final result, as the real trainable does
                report(last_epoch, True)
                last_epoch = {}
    except Exception as e:
        # Same shape as the real trainable: the error is reported (so it reaches Parquet/MLflow), then raised.
        report({"objective": float("inf"), "status": "error", "error": f"{type(e).__name__}: {e}"}, False)
        raise
    history = state["history"]
    best = max(range(len(history)), key=lambda i: history[i]["val_dice"]) if history else 0
    test_dice = q * (1.0 - 0.5 ** (best + 1)) * 0.98 if history else 0.0
    report({**last_epoch, "epoch": state["epoch"], "objective": history[-1]["val_loss"] if history else float("inf"),
            "val_loss": history[-1]["val_loss"] if history else float("nan"),
            "best_val_dice": history[best]["val_dice"] if history else 0.0, "best_epoch": best,
            "test_dice": test_dice, "test_iou": test_dice / (2.0 - test_dice),
            "test_dice_orig": test_dice * 0.99, "test_iou_orig": test_dice * 0.99 / (2.0 - test_dice * 0.99),
            "epochs_run": state["epoch"] + 1, "trainable_params": 2048 * int(hp.get("prompt_depth", 1)),
            "peak_gpu_mem_mb": 0.0, "gpu_name": "none (synthetic)", "status": "ok", "error": "",
            "busy_start": t_start, "busy_end": time.time()}, True, final=True)
