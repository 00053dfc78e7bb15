"""Step throughput of prompt tuning on CLIPSeg: images/s and MFU of one training step, variants side by side.

    # on a GPU machine (H100/H200), one command, ~3-6 min:
    .venv/bin/python benchmarks/gpu_step.py --compile --pack 1 2 4
    # CPU check of the script itself:
    .venv/bin/python benchmarks/gpu_step.py --config tiny --device cpu --batch 2 --steps 2 --warmup 1 --pack 1 2

Model: random-init `clipseg-rd64` (the architecture of CIDAS/clipseg-rd64; weights do not change the speed)
or `--weights DIR`, at 352 px, batch 32, bf16 autocast on CUDA (fp32 on CPU). One distinct prompt per batch,
as in a one-class medical dataset. Each learner (VPT, CoOp by default) is measured through a ladder of
variants, each adding one change to the previous one:

    hf-reference    bare HF CLIPSegForImageSegmentation training step as HF designed it: CLIP frozen (its
                    vision tower runs under no_grad inside HF's forward), decoder trained with AdamW; no
                    prompts, no learner, no upsampler. Its FLOPs are about CoOp's (no gradient through the
                    vision tower), so it is the floor VPT's extra backward is measured against
    baseline        our step with HF's eager (matmul + softmax) attention, for-each AdamW, a host sync per
                    step (the `isfinite(loss)` check of trainables.trial.fit) and tokenisation per step
    +sdpa           scaled_dot_product_attention (flash / memory-efficient kernels); transformers 5.23's default
    +fused-adamw    fused AdamW                              <- what trainables.trial.fit does today on CUDA
    +no-host-sync   no per-step host sync (a non-finite loss is checked once at the end)
    +one-image-pass image-conditioned learners (CoCoOp) read their features from the adapter's own frozen
                    image pass instead of a separate one (the `PromptFn` contract); the same step for others
    +dedup-text     the text encoder runs once per distinct prompt and its output is gathered per image; the
                    tokens are made once and copied from pinned memory (`trainables.batches.device_tokens`)
    +channels-last  images and the patch-embedding conv in channels-last layout
    +compile        torch.compile of the text and vision encoders, on top of +dedup-text (only with --compile)

Timing: `--warmup` steps, then `--steps` steps with no host synchronisation inside the loop except where
a variant has one on purpose; torch.cuda.synchronize() only before and after. Inputs start in pinned host
memory and are copied with non_blocking=True every step, as the DataLoader delivers them.

FLOPs per image are counted with torch.utils.flop_counter on one eager step (forward + backward, the same
math every variant runs); MFU = counted FLOP/s / the GPU's bf16 dense peak (`--peak-tflops`, else a table
by device name). The issue's nominal figures (VPT ~152 GFLOP, CoOp ~78 per training image) are printed as
a second MFU column. Peak memory is torch.cuda.max_memory_allocated per variant; `syncs` counts the
synchronising CUDA calls in one step (torch.cuda.set_sync_debug_mode), so a hidden host sync shows up.

`--pack 1 2 4`: N processes share the GPU, each running the same step (`--pack-variant`, default the best
eager variant); aggregate images/s = all images / (last end - first start) after a common start barrier.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# bf16 dense tensor-core peak (no sparsity), TFLOPS; the first name contained in the device name wins.
PEAK_BF16_TFLOPS = [("H200", 989.4), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.4), ("H800", 989.4),
                    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.1), ("L40", 181.0), ("A10G", 70.0), ("A10", 125.0),
                    ("L4", 121.0)]
NOMINAL_GFLOP = {"vpt": 152.0, "coop": 78.0}  # the issue's per-training-image figures at 352 px


@dataclass(frozen=True)
class Variant:
    name: str
    attn: str = "sdpa"
    fused: bool = True
    host_sync: bool = False
    two_image_passes: bool = False
    dedup_text: bool = False
    channels_last: bool = False
    compile: bool = False
    hf_reference: bool = False


def ladder(with_compile: bool) -> list[Variant]:
    base = Variant("baseline", attn="eager", fused=False, host_sync=True, two_image_passes=True)
    out = [Variant("hf-reference", hf_reference=True), base]
    for name, change in (("+sdpa", {"attn": "sdpa"}), ("+fused-adamw", {"fused": True}),
                         ("+no-host-sync", {"host_sync": False}), ("+one-image-pass", {"two_image_passes": False}),
                         ("+dedup-text", {"dedup_text": True}),
                         ("+channels-last", {"channels_last": True})):
        out.append(replace(out[-1], name=name, **change))
    if with_compile:
        # On +dedup-text, not +channels-last: on CPU inductor's stride assertions fail for the channels-last
        # conv/transposed-conv tensors (tried with torch 2.13); channels-last barely matters here anyway.
        dedup = next(v for v in out if v.name == "+dedup-text")
        out.append(replace(dedup, name="+compile", compile=True))
    return out


# ---------------------------------------------------------------------------------------------------------


def peak_tflops(device, override: float | None) -> tuple[float | None, str]:
    import torch

    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "no peak for CPU (pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value, f"table ({key})"
    return None, f"{name} not in the table (pass --peak-tflops)"


def set_attention(hf_model, impl: str) -> None:
    """Every CLIPSeg attention module reads `self.config._attn_implementation` at call time; the decoder's
    layers hold their own config copy, which `set_attn_implementation` does not reach, so set them all."""
    from transformers.models.clipseg.modeling_clipseg import CLIPSegAttention

    for mod in hf_model.modules():
        if isinstance(mod, CLIPSegAttention):
            mod.config._attn_implementation = impl
    hf_model.config._attn_implementation = impl


def build(args, learner: str):
    from trainables.model import ModelConfig, build_model

    options = {"image_size": args.image_size} if args.image_size else {}
    cfg = ModelConfig(vlsm="clipseg", weights=args.weights, vlsm_config=None if args.weights else args.config,
                      vlsm_options=options, learner=learner)
    return build_model(cfg)


def make_batch(model, batch: int, device, prompt: str = "polyp."):
    import torch

    s = model.spec.image_size
    g = torch.Generator().manual_seed(0)
    pin = device.type == "cuda"
    images = torch.randn(batch, 3, s, s, generator=g)
    masks = (torch.rand(batch, 1, s, s, generator=g) > 0.7).float()
    if pin:
        images, masks = images.pin_memory(), masks.pin_memory()
    return {"image": images, "mask": masks, "prompt": [prompt] * batch}


def two_pass_forward(model, x, input_ids, attention_mask, text_index=None):
    """PromptedVLSM.forward before the `PromptFn` contract: the features come from a separate image pass."""
    prompts = model.learner(model.vlsm.image_features(x))
    out = model.vlsm(x, input_ids, attention_mask, prompts, text_index=text_index)
    return out.logits if model.upsampler is None else model.upsampler(out.logits, out.tap)


class Step:
    """One training step of a variant; `__call__` enqueues GPU work and returns without synchronising
    (unless the variant has its host sync)."""

    def __init__(self, model, variant: Variant, batch: dict, device, amp_dtype):
        import torch

        from trainables.losses import dice_bce_loss

        self.torch, self.loss_fn = torch, dice_bce_loss
        self.model, self.v, self.batch, self.device, self.amp_dtype = model, variant, batch, device, amp_dtype
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        if variant.hf_reference:
            self.hf = model.vlsm.model
            set_attention(self.hf, "sdpa")
            self.decoder_params = list(self.hf.decoder.parameters())
            self.opt = torch.optim.AdamW(self.decoder_params, lr=1e-4, fused=device.type == "cuda")
            return
        set_attention(model.vlsm.model, variant.attn)
        fmt = torch.channels_last if variant.channels_last else torch.contiguous_format
        model.to(memory_format=fmt)  # only 4-D weights change: the patch embedding and upsampler convs
        params = model.param_groups(1e-3)
        fused = variant.fused and device.type == "cuda"
        self.opt = torch.optim.AdamW(params, lr=1e-4, fused=fused, foreach=None if fused else True)
        self.forward = model
        if variant.two_image_passes and model.learner is not None and model.learner.needs_image_features:
            self.forward = lambda x, **tok: two_pass_forward(model, x, **tok)
        if variant.compile:
            # The two encoders (all of the FLOPs) are compiled; the learner, decoder and upsampler stay
            # eager: inductor on CPU (torch 2.13) fails on the upsampler's replicate-padding backward. The
            # compiled functions shadow the adapter's methods for the rest of this model's life: compile is
            # the last variant of the ladder, and a packing worker runs one variant.
            vlsm = model.vlsm
            vlsm.encode_text = torch.compile(vlsm.encode_text, dynamic=False)
            vlsm.encode_vision = torch.compile(vlsm.encode_vision, dynamic=False)

    def inputs(self):
        torch, b, dev = self.torch, self.batch, self.device
        x = b["image"].to(dev, non_blocking=True)
        if self.v.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = b["mask"].to(dev, non_blocking=True)
        if self.v.dedup_text:  # what fit does: distinct prompts, tokenized once per trial, copied from pinned memory
            from trainables.batches import device_tokens

            tok = device_tokens(self.model, b["prompt"], dev)
        else:  # tokenized every step and copied from pageable memory (a hidden wait for the queued GPU work)
            tok = {k: v.to(dev, non_blocking=True) for k, v in self.model.tokenize(b["prompt"]).items()}
        return x, y, tok

    def __call__(self):
        torch = self.torch
        x, y, tok = self.inputs()
        ctx = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        if self.v.hf_reference:
            for p in self.decoder_params:  # trainable only inside this step: the model is shared with our variants
                p.requires_grad_(True)
            try:
                with ctx:
                    logits = self.hf(pixel_values=x, **tok).logits
                    loss = self.loss_fn(logits.unsqueeze(1), y)
                loss.backward()
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
            finally:
                for p in self.decoder_params:
                    p.requires_grad_(False)
            self.loss_sum += loss.detach().double()
            return
        with ctx:
            logits = self.forward(x, **tok)
            loss = self.loss_fn(logits, y)
        if self.v.host_sync and not torch.isfinite(loss):  # what fit does every step: a device->host sync
            raise RuntimeError("loss is not finite")
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.loss_sum += loss.detach().double()

    def check(self):
        if not math.isfinite(float(self.loss_sum)):
            raise RuntimeError(f"{self.v.name}: a loss was not finite")


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step: Step, device, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds per step, peak memory in GiB)."""
    import torch

    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    dt = (time.perf_counter() - t0) / steps
    step.check()
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return dt, mem


def count_syncs(step: Step) -> int | None:
    """Synchronising CUDA calls in one step (torch.cuda.set_sync_debug_mode), None on CPU."""
    import warnings

    import torch

    if step.device.type != "cuda":
        return None
    sync(step.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sync(step.device)
    return sum("synchroniz" in str(w.message) for w in caught)


def count_flops(step: Step) -> float:
    """FLOPs of one step (forward + backward) counted on the eager graph."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        step()
    sync(step.device)
    return float(fc.get_total_flops())


def resolve(args):
    import torch

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    prec = args.precision
    if prec == "auto":
        prec = "bf16" if device.type == "cuda" else "32"
    return device, (torch.bfloat16 if prec == "bf16" else None)


def run_ladder(args) -> None:
    import torch

    device, amp_dtype = resolve(args)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak, peak_src = peak_tflops(device, args.peak_tflops)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    variants = [v for v in ladder(args.compile) if not args.variants or v.name in args.variants]
    print(f"device {dev_name}  torch {torch.__version__}  precision {amp_dtype or 'fp32'}  batch {args.batch}  "
          f"steps {args.steps} (+{args.warmup} warm-up)  peak {peak or '-'} TFLOPS [{peak_src}]")
    for learner in args.learners:
        model = build(args, learner).to(device)
        model.train()
        batch = make_batch(model, args.batch, device)
        trainable, frozen = model.count_parameters()
        # The useful arithmetic: without the redundant image pass of the baseline (CoCoOp)
        count = replace(ladder(False)[1], name="count", two_image_passes=False)
        flops = count_flops(Step(model, count, batch, device, amp_dtype))
        hf_flops = count_flops(Step(model, ladder(False)[0], batch, device, amp_dtype))
        print(f"\n{learner} on {args.weights or args.config} at {model.spec.image_size}px: {trainable:,} trainable / "
              f"{frozen:,} frozen parameters; counted {flops / args.batch / 1e9:.3g} GFLOP per training image "
              f"(HF reference {hf_flops / args.batch / 1e9:.3g})")
        nominal = NOMINAL_GFLOP.get(learner)
        head = (f"{'variant':<16}{'img/s':>9}{'ms/step':>9}{'vs base':>8}{'vs HF':>7}{'TFLOP/s':>9}{'MFU':>7}"
                f"{'MFU@' + (f'{nominal:g}' if nominal else '-'):>9}{'peak GiB':>9}{'syncs':>6}")
        print(head)
        rows = {}
        for v in variants:
            try:
                step = Step(model, v, batch, device, amp_dtype)
                dt, mem = time_step(step, device, args.warmup, args.steps)
                syncs = count_syncs(step)
            except Exception as e:  # noqa: BLE001 - one failing variant (e.g. compile) must not hide the rest
                print(f"{v.name:<16} failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
                continue
            f = hf_flops if v.hf_reference else flops
            ips = args.batch / dt
            rows[v.name] = ips
            tflops = f / dt / 1e12
            mfu = f"{tflops / peak:.1%}" if peak else "-"
            mfu_nom = f"{nominal * 1e9 * ips / 1e12 / peak:.1%}" if peak and nominal and not v.hf_reference else "-"
            base = rows.get("baseline")
            ref = rows.get("hf-reference")
            print(f"{v.name:<16}{ips:>9.1f}{dt * 1e3:>9.1f}{(f'{ips / base:.2f}' if base else '-'):>8}"
                  f"{(f'{ips / ref:.2f}' if ref else '-'):>7}{tflops:>9.2f}{mfu:>7}{mfu_nom:>9}{mem:>9.2f}"
                  f"{'-' if syncs is None else syncs:>6}")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ---- packing: N processes on one GPU ---------------------------------------------------------------------


def _pack_worker(args, variant_name: str, threads: int, barrier, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    device, amp_dtype = resolve(args)
    model = build(args, args.pack_learner).to(device)
    model.train()
    variant = next(v for v in ladder(True) if v.name == variant_name)
    step = Step(model, variant, make_batch(model, args.batch, device), device, amp_dtype)
    for _ in range(args.warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    barrier.wait()
    t0 = time.time()
    for _ in range(args.steps):
        step()
    sync(device)
    t1 = time.time()
    step.check()
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    queue.put((args.steps * args.batch, t0, t1, mem))


def run_pack(args) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    variant = args.pack_variant
    print(f"\npacking: N processes on one device, {args.pack_learner}, variant {variant}, batch {args.batch}, "
          f"{args.steps} timed steps each after a common start")
    print(f"{'N':>3}{'img/s per process':>19}{'aggregate img/s':>17}{'vs N=1':>8}{'peak GiB/process':>18}")
    single = None
    cores = os.cpu_count() or 1
    for n in args.pack:
        barrier, queue = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_pack_worker, args=(args, variant, max(1, cores // n), barrier, queue))
                 for _ in range(n)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=args.pack_timeout) for _ in procs]
        for p in procs:
            p.join()
        images = sum(r[0] for r in results)
        window = max(r[2] for r in results) - min(r[1] for r in results)
        per = [r[0] / (r[2] - r[1]) for r in results]
        agg = images / window
        single = single or agg
        print(f"{n:>3}{sum(per) / n:>19.1f}{agg:>17.1f}{agg / single:>8.2f}{max(r[3] for r in results):>18.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="clipseg-rd64", help="shipped CLIPSeg config for a random-init model")
    ap.add_argument("--weights", default=None, help="local CLIPSeg checkpoint directory instead of --config")
    ap.add_argument("--image-size", type=int, default=None, help="default: the model's (352 for rd64)")
    ap.add_argument("--learners", nargs="+", default=["vpt", "coop", "cocoop"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", choices=["auto", "bf16", "32"], default="auto")
    ap.add_argument("--compile", action="store_true", help="add the torch.compile variant (compiles per learner)")
    ap.add_argument("--variants", nargs="+", help="only these variants (names as in the table)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak of the device")
    ap.add_argument("--pack", type=int, nargs="*", default=[], help="also measure N processes per GPU, e.g. 1 2 4")
    ap.add_argument("--pack-learner", default="vpt")
    ap.add_argument("--pack-variant", default="+channels-last")
    ap.add_argument("--pack-timeout", type=float, default=900.0)
    ap.add_argument("--no-ladder", action="store_true", help="only the --pack measurement")
    args = ap.parse_args()
    if args.pack_variant not in {v.name for v in ladder(True)} - {"hf-reference"}:
        ap.error(f"--pack-variant: unknown variant {args.pack_variant!r}")
    if not args.no_ladder:
        run_ladder(args)
    if args.pack:
        run_pack(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
