"""The learnable upsampler: `conv(upsample(x))` as written vs `conv_after_upsample` (trainables/upsampler.py).

Forward + backward (gradients for the input and the block's parameters, as a prompt-tuning step needs them)
of the CLIPSeg and CRIS blocks at the mini models' sizes and at full size, one process, the two forms
interleaved per shape; prints milliseconds per step and the ratio.

    .venv/bin/python benchmarks/upsampler.py [--batch 8] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from trainables.upsampler import PatchUpsampler
from trainables.vlsm.cris.model import CRISUpsampler

# name -> (block factory, decoder grid shape without the batch); sizes from the VLSM configs in the repo
CASES = {
    "CLIPSeg mini (64 ch, 12 -> 96 px)": (lambda: PatchUpsampler(64, 8), (64, 12, 12)),
    "CRIS mini (64 ch, 6 -> 96 px)": (lambda: CRISUpsampler(64, 64, 96, 5), (64, 6, 6)),
    "CLIPSeg rd64 (64 ch, 22 -> 352 px)": (lambda: PatchUpsampler(64, 16), (64, 22, 22)),
    "CRIS R50 (512 ch, 26 -> 416 px)": (lambda: CRISUpsampler(512, 64, 416, 5), (512, 26, 26)),
}


def as_written(block, x):
    reduced = block.reduce(x) if hasattr(block, "reduce") else x
    return block.conv(block.upsample(reduced))


def step_ms(fn, block, x, repeats: int) -> float:
    def once():
        out = fn(block, x)
        out.square().mean().backward()
    once()  # warm-up: oneDNN builds its kernels for the shape
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    return (time.perf_counter() - t0) / repeats * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a mini trial under Ray gets 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"batch {args.batch}, {args.threads} thread(s), fp32, forward + backward, ms per step (median of interleaved rounds)")
    print("| block | as written | fast form | ratio |\n|---|---:|---:|---:|")
    for name, (make, shape) in CASES.items():
        block = make()
        x = torch.randn(args.batch, *shape, requires_grad=True)
        slow, fast = [], []
        for _ in range(3):  # interleaved rounds: a neighbour's load falls on both forms alike
            slow.append(step_ms(as_written, block, x, args.repeats))
            fast.append(step_ms(lambda b, t: b(t), block, x, args.repeats))
        s, f = sorted(slow)[1], sorted(fast)[1]
        print(f"| {name} | {s:,.1f} | {f:,.1f} | {s / f:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
