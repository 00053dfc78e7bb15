"""No host read of a tensor's values inside a training step's forward and backward.

On CUDA every such read (`bool(t)`, `t.item()`, `int(t)`, `t.tolist()`) waits for all the GPU work queued
before it. These tests run the step on the CPU with those entry points made to raise, so a read added
anywhere in the adapters, learners or loss fails here, without a GPU.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from trainables.batches import device_images, device_tokens
from trainables.losses import dice_bce_loss
from trainables.model import build_model

READS = ("__bool__", "item", "tolist", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def no_host_reads(monkeypatch):
    with monkeypatch.context() as m:
        for name in READS:
            def refuse(self, *args, _name=name, **kwargs):
                raise AssertionError(f"Tensor.{_name} in the step: a host read (a device sync on CUDA)")
            m.setattr(torch.Tensor, name, refuse)
        yield


def test_the_guard_catches_a_read(monkeypatch):
    with no_host_reads(monkeypatch), pytest.raises(AssertionError, match="host read"):
        if torch.ones(2).sum() > 1:
            pass


@pytest.mark.parametrize("vlsm, learner", [("clipseg", "coop"), ("clipseg", "cocoop"), ("clipseg", "vpt"),
                                           ("clipseg", "maple"), ("clipseg", "shared_attention"),
                                           ("clipseg", "shared_separate"), ("clipseg", "e2e"), ("cris", "coop"),
                                           ("cris", "cocoop"), ("cris", "e2e")])
@pytest.mark.parametrize("prompts", [["polyp."] * 4, ["polyp.", "a large tumour in the image.", "polyp.", "x"]])
def test_forward_and_backward_read_nothing_back(monkeypatch, vlsm, learner, prompts):
    extra = {"shared_attention": {"nhead": 4, "dim_feedforward": 48}}.get(learner, {})
    config = {} if learner == "e2e" else {"context_init": None, "prompt_depth": 2, **extra}
    model = build_model({"vlsm": vlsm, "vlsm_config": "tiny", "learner": learner,
                         "learner_config": config}).train()
    s = model.spec.image_size
    cpu = torch.device("cpu")
    images = torch.randint(0, 256, (4, 3, s, s), dtype=torch.uint8)
    mask = (torch.rand(4, 1, s, s) > 0.5).float()
    tokens = device_tokens(model, prompts, cpu)  # made once per trial, outside the step
    with no_host_reads(monkeypatch):
        x = device_images(images, cpu, model.spec.mean, model.spec.std)
        loss = dice_bce_loss(model(x, **tokens), mask, 0.2)
        loss.backward()
    assert any(p.grad is not None for _, p in model.named_trainable_parameters())
