"""The CUDA paths of the trial: mixed precision, device normalisation, and no host sync inside a step.

Marked `gpu` and skipped without CUDA: run them on a GPU machine with `make test-gpu`. The CPU suite
covers the same code paths in fp32.
"""

from __future__ import annotations

import math

import pytest
import torch

from trainables.batches import collate, device_images, device_tokens, forward_batch
from trainables.data import make_synthetic
from trainables.model import build_model
from trainables.trial import TrialConfig, build_datasets, fit

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

MODEL = {"vlsm": "clipseg", "vlsm_config": "tiny", "learner": "cocoop", "learner_config": {"context_init": None}}


@pytest.fixture(scope="module")
def polyp(tmp_path_factory):
    return make_synthetic("mini_polyp", tmp_path_factory.mktemp("gpu") / "mini_polyp", counts=(16, 8, 8))


def _cfg(root, **train):
    return TrialConfig.from_dict({"model": MODEL, "data": {"dataset": "mini_polyp", "root": str(root)},
                                  "train": {"max_epochs": 2, "min_epochs": 1, "batch_size": 8,
                                            "effective_batch_size": 8, "lr": 1e-3, "device": "cuda", **train}})


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_fit_on_cuda_in_mixed_precision(polyp, precision):
    if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    reports = []
    final = fit(_cfg(polyp, precision=precision), lambda m, d: reports.append((m, d)))
    assert final["status"] == "ok" and 0.0 <= final["test_dice"] <= 1.0
    assert all(math.isfinite(m["train_loss"]) for m, _ in reports if "train_loss" in m)
    assert final["peak_gpu_mem_mb"] > 0 and final["gpu_name"]


def test_uint8_batches_normalise_on_the_gpu_as_on_the_cpu():
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    mean, std = (0.48, 0.45, 0.40), (0.26, 0.26, 0.27)
    on_gpu = device_images(images, torch.device("cuda"), mean, std)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), device_images(images, torch.device("cpu"), mean, std))


def test_a_training_step_never_waits_for_the_gpu(polyp):
    # The step of `fit`: batch and tokens to the device, forward under autocast, backward, fused AdamW.
    # sync-debug mode "error" raises on any synchronising call (a .item(), a nonzero, a blocking copy).
    cfg = _cfg(polyp, precision="bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed")
    device = torch.device("cuda")
    model = build_model(cfg.model).to(device).train()
    train = build_datasets(cfg, model.spec)["train"]
    # as the DataLoader delivers them on a GPU machine: uint8, pinned
    batches = [collate([train[i] for i in range(k, k + 8)]) for k in (0, 8)]
    batches = [{k: v.pin_memory() if torch.is_tensor(v) else v for k, v in b.items()} for b in batches]
    optimizer = torch.optim.AdamW(model.param_groups(1e-3), lr=1e-3, fused=True)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else None

    def step(batch):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            logits, mask = forward_batch(model, batch, device)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), mask)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up: allocations, tokens made and cached, lazy CUDA initialisation
    device_tokens(model, batches[1]["prompt"], device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(batches[1])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
