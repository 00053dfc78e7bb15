"""What per-cell ASHA saves on a small mini sweep, and what it costs in best Dice: the same spec run twice,
without and with `execution.scheduler: asha`, side by side.

    .venv/bin/python benchmarks/asha_savings.py [--learners coop vpt maple] [--datasets mini_polyp]
        [--trials 8] [--grace 2] [--rf 2] [--sampler tpe|random] [--storage DIR] [--fake]

The spec is experiments/mini.yaml narrowed to CLIPSeg, the given learners and datasets, and more trials per
cell (ASHA needs company at its rungs). Trial time is the sum of the Parquet `seconds` column (each trial's
own run time, fixed costs included); best Dice is the test Dice of each cell's selected trial (lowest
objective among status-ok trials). With `--sampler random` both runs draw the same configurations, so the
Dice difference is ASHA's alone; with `tpe` (the default, what a sweep uses) pruning also changes what TPE
learns. `--fake` swaps in the synthetic trainable to check the script in seconds. Takes minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_spec(args, scheduler: str):
    from benchmark.plan.spec import spec_from_dict

    raw = yaml.safe_load((REPO / "experiments" / "mini.yaml").read_text())
    raw["name"] = f"asha-savings-{scheduler}"
    raw["axes"] = {"vlsm": ["clipseg"], "learner": list(args.learners), "dataset": list(args.datasets),
                   "variant": ["default"]}
    raw["vlsms"] = {"clipseg": raw["vlsms"]["clipseg"]}
    raw["rules"] = []
    raw["tables"] = []
    raw["tracking"] = {"mlflow": False}
    raw["search"].update(trials=args.trials, sampler=args.sampler)
    raw.setdefault("execution", {}).update(scheduler=scheduler, grace_period=args.grace, reduction_factor=args.rf)
    if args.fake:
        raw["trainable"] = "trainables.fake.fake_trainable"
        raw["fixed"]["fake"] = {"epoch_seconds": 0.05}
    return spec_from_dict(raw, base_dir=REPO)


def summarise(run_dir: Path) -> dict:
    from benchmark.plan.spec import Selection
    from benchmark.results.run_dir import RunDir, select

    rows = RunDir(run_dir).frame()
    best = {}
    for cid, cell in rows.groupby("cell_id"):
        sel = select(cell.to_dict("records"), Selection())
        best[cid] = None if sel is None else sel.get("test_dice")
    return {"trials": len(rows), "pruned": int((rows["status"] == "pruned").sum()),
            "epochs": int(rows["epochs_run"].fillna(0).sum()), "seconds": float(rows["seconds"].fillna(0).sum()),
            "best": best}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--learners", nargs="+", default=["coop", "vpt", "maple"])
    ap.add_argument("--datasets", nargs="+", default=["mini_polyp"])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--grace", type=int, default=2, help="ASHA grace period in epochs")
    ap.add_argument("--rf", type=float, default=2.0, help="ASHA reduction factor")
    ap.add_argument("--sampler", choices=["tpe", "random"], default="tpe")
    ap.add_argument("--storage", help="keep the two runs here (default: a temporary directory)")
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--fake", action="store_true", help="synthetic trainable: check the script in seconds")
    args = ap.parse_args()

    import ray

    from benchmark.sweep.coordinator import run_sweep

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(args.storage or tmp).resolve()
        for scheduler in ("none", "asha"):
            spec = make_spec(args, scheduler)
            t0 = time.time()
            run_sweep(spec, storage, force=True)
            out[scheduler] = {**summarise(storage / spec.name), "wall": time.time() - t0}
    ray.shutdown()

    full, asha = out["none"], out["asha"]
    print()
    print(f"clipseg x {args.learners} x {args.datasets}: {args.trials} trials per cell, sampler {args.sampler}, "
          f"ASHA grace {args.grace} epochs, reduction factor {args.rf:g}"
          + (" (synthetic trainable)" if args.fake else ""))
    print(f"{'':14}{'trials':>7}{'pruned':>7}{'epochs':>8}{'trial s':>10}{'wall s':>9}{'mean best Dice':>16}")
    for name, r in (("no scheduler", full), ("ASHA", asha)):
        vals = [v for v in r["best"].values() if v is not None]
        mean = sum(vals) / len(vals) if vals else float("nan")
        print(f"{name:14}{r['trials']:>7}{r['pruned']:>7}{r['epochs']:>8}{r['seconds']:>10.1f}{r['wall']:>9.1f}"
              f"{mean:>16.4f}")
    saved = 1 - asha["seconds"] / full["seconds"] if full["seconds"] else float("nan")
    print(f"trial time saved by ASHA: {saved:.1%} ({full['seconds'] - asha['seconds']:.1f} s of "
          f"{full['seconds']:.1f} s); epochs run: {asha['epochs']} vs {full['epochs']}")
    print(f"{'cell':<32}{'best Dice (none)':>18}{'best Dice (ASHA)':>18}{'diff':>9}")
    for cid in full["best"]:
        a, b = full["best"][cid], asha["best"].get(cid)
        diff = f"{b - a:+.4f}" if a is not None and b is not None else "-"
        print(f"{cid:<32}{_f(a):>18}{_f(b):>18}{diff:>9}")
    return 0


def _f(v) -> str:
    return "-" if v is None else f"{v:.4f}"


if __name__ == "__main__":
    raise SystemExit(main())
