"""`tunevlseg run SPEC [--storage DIR] [--address ADDR]`: run or resume a spec's sweep on Ray Tune."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

NAME = "run"
HELP = "run a spec's sweep on Ray Tune (rerun the same command to resume it)"


def add_arguments(parser) -> None:
    parser.add_argument("spec", help="experiment spec: a path (experiments/table3.yaml) or a shipped name (table3, mini, smoke)")
    parser.add_argument("--storage", metavar="DIR", default=None,
                        help="absolute results directory; the run lives in DIR/<spec name> "
                             "(default: ./results/runs)")
    parser.add_argument("--address", metavar="ADDR", help="Ray cluster to join (e.g. auto); default: start a local Ray")
    parser.add_argument("--data", metavar="DIR", help="dataset root (datasets live in DIR/<dataset>)")
    parser.add_argument("--force", action="store_true", help="start over even if the run exists (old results are kept "
                        "under DIR/<spec>/previous/)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="run the failed trials again (status error, e.g. after fixing a corrupt image), under "
                             "the same trial ids and parameters; every other recorded trial is kept")
    parser.add_argument("--trainable", metavar="MODULE.FUNC", help="override the spec's trainable (import path)")
    parser.add_argument("--mlflow", metavar="URI", help="MLflow tracking URI (default: sqlite in the run directory)")
    parser.add_argument("--optuna-storage", metavar="URL",
                        help="SQLAlchemy URL of the cells' Optuna studies (default: sqlite:///<run dir>/optuna.db)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--num-gpus", type=float, help="GPUs of the local Ray (default: all)")
    parser.add_argument("--verbose", action="store_true", help="show Ray's status table and worker logs")
    smoke = parser.add_argument_group("rehearsal (benchmark/sweep/smoke.py)")
    smoke.add_argument("--smoke", action="store_true",
                       help="rehearse the spec instead of running it: one short trial per cell whose data is "
                            "present, at the spec's real settings; rows go to <storage>/<spec>.smoke/; ends with "
                            "a table and the projected cost of the full spec")
    smoke.add_argument("--smoke-batch-cap", type=int, metavar="N",
                       help="cap every trial's batch at N, keeping its accumulation (default: 2 without a GPU, "
                            "none with one)")


def run(args) -> int:
    from benchmark.plan.spec import load_spec
    from benchmark.sweep.coordinator import run_sweep

    spec = load_spec(args.spec)
    if args.data:
        spec = spec.with_data_root(args.data)
    storage = args.storage if args.storage is not None else str(Path.cwd() / "results" / "runs")
    if args.smoke:
        from benchmark.sweep.smoke import run_rehearsal

        return run_rehearsal(spec, storage, address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                             batch_cap=args.smoke_batch_cap, verbose=args.verbose, trainable=args.trainable)
    hint = " ".join(shlex.quote(a) for a in ["tunevlseg", "run", args.spec, "--storage", storage]
                    + (["--data", args.data] if args.data else []) + (["--address", args.address] if args.address else []))
    result = run_sweep(spec, storage, trainable=args.trainable, address=args.address, force=args.force,
                       num_cpus=args.num_cpus, num_gpus=args.num_gpus, mlflow_uri=args.mlflow, verbose=args.verbose,
                       resume_hint=hint, optuna_storage=args.optuna_storage, retry_failed=args.retry_failed)
    if result.failed:
        print(f"tunevlseg run: {result.failed} trial(s) failed; see the error column of "
              f"{result.run_dir}/trials/*.parquet; once the cause is fixed (e.g. `tunevlseg data check`), run only "
              f"those again: {hint} --retry-failed", file=sys.stderr)
    return result.exit_code
