"""Slot utilisation: one Tuner per cell (run one after another) vs one Tuner over all cells (MultiCellSearcher).

    .venv/bin/python benchmarks/slot_utilisation.py [--cells 3] [--trials 6] [--slots 4] [--epoch-seconds 0.6]

Both designs run the same spec with the synthetic trainable (`trainables.fake`) on a local Ray with one
simulated GPU split into fractional slots (`gpu: 1/slots` per trial, as prompt tuning uses). Trial lengths
are uneven on purpose: every cell has its own epoch time and each trial varies by up to 2x, the way real
learners and hyperparameters do. Utilisation = sum of trial busy time / (window x slots), where a trial's
busy time is the span its training function ran (measured inside the trial) and the window runs from the
first trial start to the last trial end of that design (so driver start-up is not counted; the gaps
between per-cell Tuners are, because they are real). The wall time of the whole design is printed too.

The per-cell design is the coordinator itself run once per cell (a one-cell spec each): one Tuner, one
OptunaSearch per cell, exactly what "one Tuner per cell" means, with the same trainable and settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LEARNERS = ["coop", "maple", "vpt", "shared_separate", "cocoop", "shared_attention"]


def make_spec(learners: list[str], trials: int, slots: int, epoch_seconds: float, name: str, reuse: bool = False):
    from benchmark.plan.spec import spec_from_dict

    # Cell k's epochs take (1 + k) x epoch_seconds: cells differ by up to several times, as real learners do.
    rules = [{"when": {"learner": lrn}, "set": {"fake.epoch_seconds": epoch_seconds * (1 + k)}}
             for k, lrn in enumerate(learners)]
    return spec_from_dict({
        "name": name, "trainable": "trainables.fake.fake_trainable",
        "axes": {"vlsm": ["clipseg"], "learner": learners, "dataset": ["kvasir"]},
        "fixed": {"train": {"max_epochs": 3}, "fake": {"jitter": 1.0}},
        "rules": rules,
        "search": {"trials": trials, "n_startup_trials": 2},
        "resources": {"cpu": 2.0 / slots, "gpu": 1.0 / slots},
        "data": {"roots": {"kvasir": tempfile.gettempdir()}},
        "tracking": {"mlflow": False},
        "execution": {"reuse_actors": reuse},
    })


def busy_spans(run_dir: Path) -> list[tuple[float, float]]:
    spans = []
    for result in (run_dir / "tune").glob("*/result.json"):
        lines = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
        last = next((r for r in reversed(lines) if "busy_start" in r), None)
        if last:
            spans.append((last["busy_start"], last["busy_end"]))
    return spans


def measure(name: str, run_dirs: list[Path], wall: float, slots: int, trials: int) -> dict:
    spans = [s for d in run_dirs for s in busy_spans(d)]
    assert len(spans) == trials, f"{name}: {len(spans)} trial results, expected {trials}"
    window = max(e for _, e in spans) - min(s for s, _ in spans)
    busy = sum(e - s for s, e in spans)
    return {"design": name, "trials": len(spans), "wall_s": wall, "window_s": window, "busy_s": busy,
            "utilisation": busy / (window * slots), "utilisation_wall": busy / (wall * slots)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=3)
    ap.add_argument("--trials", type=int, default=6, help="trials per cell")
    ap.add_argument("--slots", type=int, default=4, help="fractional GPU slots (gpu = 1/slots per trial)")
    ap.add_argument("--epoch-seconds", type=float, default=0.6)
    ap.add_argument("--reuse-actors", action="store_true",
                    help="keep worker processes between trials (removes the ~2 s process start per trial)")
    args = ap.parse_args()

    import ray

    from benchmark.sweep.coordinator import run_sweep

    learners = LEARNERS[: args.cells]
    total = args.cells * args.trials
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp)
        t0 = time.time()
        dirs = []
        for lrn in learners:
            spec = make_spec([lrn], args.trials, args.slots, args.epoch_seconds * (1 + learners.index(lrn)),
                             f"per-cell-{lrn.replace('_', '-')}", args.reuse_actors)
            run_sweep(spec, storage)
            dirs.append(storage / spec.name)
        rows.append(measure("one Tuner per cell (sequential)", dirs, time.time() - t0, args.slots, total))

        t0 = time.time()
        spec = make_spec(learners, args.trials, args.slots, args.epoch_seconds, "multi-cell", args.reuse_actors)
        run_sweep(spec, storage)
        rows.append(measure("one Tuner, MultiCellSearcher", [storage / spec.name], time.time() - t0, args.slots,
                            total))
    ray.shutdown()

    print()
    print(f"{args.cells} cells x {args.trials} trials, {args.slots} slots of {1 / args.slots:g} simulated GPU, "
          f"3 epochs of {args.epoch_seconds:g}-{args.epoch_seconds * args.cells:g} s (+ up to 100% jitter) per trial, "
          f"reuse_actors={args.reuse_actors}")
    print(f"{'design':<34} {'trials':>6} {'wall s':>8} {'window s':>9} {'busy s':>8} {'util':>6} {'util(wall)':>11}")
    for r in rows:
        print(f"{r['design']:<34} {r['trials']:>6} {r['wall_s']:>8.1f} {r['window_s']:>9.1f} {r['busy_s']:>8.1f} "
              f"{r['utilisation']:>6.1%} {r['utilisation_wall']:>11.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
