"""Helpers of the learners that attach modules to a VLSM's encoders (LoRA, adapters): module lookup by
dotted name, replacement, and a wrapper that adapts a sublayer's output. Torch code; the learners' folders
import it only from their `model.py`."""

from __future__ import annotations

from torch import nn

from trainables.vlsm.base import AttachPoints


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)

def attach_points(learner, vlsm: nn.Module) -> AttachPoints:
    """The VLSM's attach points, or a one-line config error naming the VLSM when it has none."""
    try:
        return vlsm.attach_points()
    except NotImplementedError:
        learner.config.fail("vlsm", f"{vlsm.spec.name} declares no attach points (VLSMAdapter.attach_points); "
                                    "use a prompt learner on it")

class AdaptedOutput(nn.Module):
    """`inner` with `adapter` applied to its output (the first element where it returns a tuple, as HF's
    attention and `nn.MultiheadAttention` do): an adapter placed before the residual addition."""

    def __init__(self, inner: nn.Module, adapter: nn.Module):
        super().__init__()
        self.inner = inner
        self.adapter = adapter

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        if isinstance(out, tuple):
            return (self.adapter(out[0]), *out[1:])
        return self.adapter(out)
