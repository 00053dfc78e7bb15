"""Numerics across CPU kernels: one mini trial under several SIMD / library / thread settings.

The same trial (a cell of the mini spec with fixed hyperparameters, fixed seed) runs in a fresh subprocess
per setting, because ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA and MKL_CBWR are read when torch loads. The
settings run interleaved (A B C ... A B C ...) `--repeats` times, so a neighbour's load on shared cores
falls on every setting alike; the table shows each setting's objective and test Dice (all digits), whether
they are bit-identical to the first setting's, and the median seconds with the ratio to the first.

    python benchmarks/numerics.py --data data/mini [--cell clipseg_coop_mini-polyp] [--epochs 2] [--repeats 2]

Needs the mini data (`tunevlseg data make-synthetic --dst data/mini`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# name -> environment added to the child's. Every setting runs torch on 1 thread, as a mini trial does under
# Ray (a 1-CPU trial gets OMP_NUM_THREADS=1), except "threads=2" (NUMERICS_THREADS: torch.set_num_threads).
SETTINGS = {
    "default": {},
    "aten=avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "aten=default": {"ATEN_CPU_CAPABILITY": "default"},  # no vectorised ATen kernels
    "onednn=avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "mkl_cbwr=compatible": {"MKL_CBWR": "COMPATIBLE"},
    "all=avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"},
    "threads=2": {"NUMERICS_THREADS": "2"},
    "all=avx2,threads=2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
                           "NUMERICS_THREADS": "2"},
}


def child(args: argparse.Namespace) -> None:
    """Run the trial once in this process and print one JSON line."""
    import torch

    from benchmark.plan.matrix import build_plan
    from benchmark.plan.search_space import apply_values
    from benchmark.plan.spec import load_spec
    from trainables.trial import TrialConfig, fit

    torch.set_num_threads(int(os.environ.get("NUMERICS_THREADS", "1")))
    spec = load_spec(args.spec).with_data_root(args.data)
    cell = build_plan(spec).cell(args.cell)
    config = apply_values(cell.config, cell.params, {p.name: _middle(p) for p in cell.params})
    config["train"].update(max_epochs=args.epochs, min_epochs=min(args.epochs, 2), save_artifact=False,
                           device="cpu")
    t0 = time.perf_counter()
    final = fit(TrialConfig.from_dict(config), lambda metrics, ckpt: None)
    print(json.dumps({"objective": final["objective"], "test_dice": final["test_dice"],
                      "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(),
                      "capability": torch.backends.cpu.get_cpu_capability()}))


def _middle(p):
    """The middle of a parameter's domain (geometric on a log scale): a learning rate that trains."""
    if p.choices:
        return p.choices[0]
    if p.kind == "int":
        return int(round((p.low + p.high) / 2))
    return (p.low * p.high) ** 0.5 if p.log else (p.low + p.high) / 2


def run_once(name: str, args: argparse.Namespace) -> dict:
    keep = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")}
    env = {**keep, **SETTINGS[name]}
    cmd = [sys.executable, __file__, "--child", "--spec", args.spec, "--data", args.data, "--cell", args.cell,
           "--epochs", str(args.epochs)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"setting {name}: the trial failed (rc {out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="mini")
    ap.add_argument("--data", default="data/mini", help="root of the mini datasets")
    ap.add_argument("--cell", default="clipseg_coop_mini-polyp")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of the trial (the spec's: 8)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds over all settings")
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.data = str(Path(args.data).resolve())
    if args.child:
        child(args)
        return
    results: dict[str, list[dict]] = {n: [] for n in args.settings}
    for r in range(args.repeats):
        for name in args.settings:  # interleaved: A B C ... then again
            res = run_once(name, args)
            results[name].append(res)
            print(f"# round {r + 1} {name}: {res['objective']!r} {res['seconds']:.1f}s", file=sys.stderr, flush=True)
    base = results[args.settings[0]][0]
    base_s = statistics.median(x["seconds"] for x in results[args.settings[0]])
    print(f"trial: {args.spec} {args.cell}, {args.epochs} epochs, {args.repeats} interleaved round(s); seconds are "
          "medians (contended if the cores are shared)")
    print(f"| setting | capability | threads | objective | test Dice | identical to {args.settings[0]} | "
          "same in every round | seconds | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.settings:
        rs = results[name]
        first = rs[0]
        same = first["objective"] == base["objective"] and first["test_dice"] == base["test_dice"]
        stable = all(x["objective"] == first["objective"] and x["test_dice"] == first["test_dice"] for x in rs)
        sec = statistics.median(x["seconds"] for x in rs)
        print(f"| {name} | {first['capability']} | {first['threads']} | {first['objective']!r} | "
              f"{first['test_dice']!r} | {'yes' if same else 'no'} | {'yes' if stable else 'no'} | {sec:.1f} | "
              f"{sec / base_s:.2f} |")


if __name__ == "__main__":
    main()
