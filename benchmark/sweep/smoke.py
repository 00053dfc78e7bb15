"""`tunevlseg run SPEC --smoke [--data DIR]`: a rehearsal of a spec before booking GPU time.

Every cell whose dataset is present runs ONE short trial through the real sweep machinery (Ray Tune, the
real trainable, Parquet rows, checkpoints, artifacts) at the spec's real settings: the VLSM architectures and
image sizes, precision, batch and accumulation rules, variants and (on a GPU) resources. What is cut:
- `SMOKE_EPOCHS` epochs of `SMOKE_STEPS` optimizer steps, validation and test on `SMOKE_EVAL_BATCHES` batch;
- the search: one trial per cell at a fixed point of its space, the memory worst case (largest prompt depth
  and widths, booleans off, floats mid-range), so a cell that fits here fits in the sweep;
- on a machine without a GPU: the batch is capped (`--smoke-batch-cap`, default `CPU_BATCH_CAP`) keeping the
  accumulation factor, every trial takes one CPU and no GPU. With a GPU the real batch runs (memory is
  rehearsed too).
Cells whose data root is missing are listed as skipped. Weights that cannot be loaded (no hub access, no
converted CRIS file) are replaced by a random init of the same architecture, announced and recorded.

Rows go to `<storage>/<spec name>.smoke/`, under the spec name `<name>.smoke` (a name no real spec can
have): `tunevlseg tables` refuses them, so a rehearsal never mixes into a real run's tables. The run folder
holds `smoke.json` (settings, fallbacks, skipped cells, per-cell measurements) and `smoke.txt` (the table).
`tunevlseg plan SPEC --estimate --from <that folder>` prices the full spec from the measured step times.

Torch-free at import (the tables path imports REHEARSAL_SUFFIX).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.results.run_dir import RunDir

REHEARSAL_SUFFIX = ".smoke"  # appended to the spec name of rehearsal rows and run folders
SMOKE_EPOCHS = 2  # two, so checkpointing, the LR scheduler and best-epoch selection run
SMOKE_STEPS = 2  # optimizer steps per epoch (each `accumulate` micro-batches)
SMOKE_EVAL_BATCHES = 1
CPU_BATCH_CAP = 2


def is_rehearsal(run_dir: str | os.PathLike) -> bool:
    return RunDir(run_dir).smoke_marker.is_file()


def rehearsal_specs(specs) -> list[str]:
    return [s for s in specs if str(s).endswith(REHEARSAL_SUFFIX)]


@dataclass
class Fallback:
    vlsm: str
    weights: str | None
    config: Any  # the architecture built instead (a shipped config name, or None = the VLSM's default)
    reason: str


@dataclass
class Rehearsal:
    spec: Any  # the derived Spec (name <name>.smoke, fallbacks applied)
    plan: Any  # its Plan: one fixed trial per present cell
    full_plan: Any  # the spec's real plan (all cells), for the projection
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (cell id, reason)
    fallbacks: list[Fallback] = field(default_factory=list)
    batch_cap: int | None = None
    device: str = "cpu"


# ---- weights -------------------------------------------------------------------------------------------


def _shipped_config(vlsm: str, name: str) -> str | None:
    from trainables.catalog import VLSMS

    return name if vlsm in VLSMS and (VLSMS.get(vlsm).config_dir / f"{name}.json").is_file() else None


def _hub_reachable(repo: str) -> str | None:
    """None when `repo`'s config can be had (local cache or one quick request to the hub), else why not.
    One request with a short timeout, not huggingface_hub's retries: an offline machine must not stall."""
    import urllib.error
    import urllib.request

    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(repo, "config.json"), str):
            return None
    except ImportError:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return "HF_HUB_OFFLINE is set and the weights are not in the local cache"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/{repo}/resolve/main/config.json"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5).close()
        return None
    except urllib.error.HTTPError as e:
        return f"{url}: HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        return f"hub not reachable ({getattr(e, 'reason', e)})"


def weights_problem(weights: str | None) -> str | None:
    """Why `weights` cannot be loaded here, or None when they can (as far as can be told cheaply)."""
    if weights is None:
        return None
    from trainables.resources import is_local_path

    p = Path(weights).expanduser()
    if is_local_path(weights):
        return None if p.exists() else f"{weights} does not exist"
    return _hub_reachable(weights)


def resolve_weights(spec) -> tuple[Any, list[Fallback]]:
    """The spec with unloadable weights replaced by a random init of the same architecture."""
    from benchmark.plan.spec import VLSMSettings

    vlsms, fallbacks = dict(spec.vlsms), []
    names = set(spec.axes.vlsm) | {p[0] for p in spec.axes.pairs or ()}
    for name in sorted(names):
        s = vlsms.get(name) or VLSMSettings()
        problem = weights_problem(s.weights)
        if problem is None:
            continue
        # The architecture: the spec's own config, else the shipped config named like the weights
        # (CIDAS/clipseg-rd64 -> clipseg-rd64, models/cris-rn50.safetensors -> cris-rn50), else the default.
        arch = s.config if s.config is not None else _shipped_config(name, Path(str(s.weights)).stem)
        fallbacks.append(Fallback(name, s.weights, arch, problem))
        vlsms[name] = dataclasses.replace(s, weights=None, config=arch)
    return dataclasses.replace(spec, vlsms=vlsms), fallbacks


# ---- the rehearsal plan --------------------------------------------------------------------------------


def worst_case_values(params) -> dict[str, Any]:
    """One point of a cell's space: the largest integer / numeric choice (deepest prompts, widest
    projections: the most memory), booleans off (no LoRA factorisation: the full projection), floats at the
    middle of their range (geometric for log ranges)."""
    out: dict[str, Any] = {}
    for p in params:
        if p.kind == "categorical":
            choices = list(p.choices or ())
            if all(isinstance(c, bool) for c in choices):
                out[p.name] = False if False in choices else choices[0]
            elif all(isinstance(c, (int, float)) for c in choices):
                out[p.name] = max(choices)
            else:
                out[p.name] = choices[0]
        elif p.kind == "int":
            out[p.name] = int(p.high)
        else:
            out[p.name] = math.sqrt(p.low * p.high) if p.log and p.low > 0 else (p.low + p.high) / 2
    return out


def _data_problem(cell) -> str | None:
    root = cell.config.get("data", {}).get("root")
    if root is None:
        return "no data root (pass --data DIR or set data.root)"
    if not Path(root).is_dir():
        return f"no data at {root}"
    return None


def build_rehearsal(spec, *, on_gpu: bool, cpus: float, batch_cap: int | None = None) -> Rehearsal:
    """The rehearsal of `spec`: its real plan, and a plan of one short fixed trial per present cell."""
    from benchmark.plan import search_space
    from benchmark.plan.matrix import Plan, build_plan
    from trainables.config import ConfigError
    from trainables.trial_config import TrainConfig

    full_plan = build_plan(spec)
    derived, fallbacks = resolve_weights(spec)
    name = spec.name + REHEARSAL_SUFFIX
    derived = dataclasses.replace(
        derived, name=name,
        tracking=dataclasses.replace(derived.tracking, mlflow=False),  # never into a real tracking server
        execution=dataclasses.replace(derived.execution, max_failures=0, scheduler="none"),
        # one trial per cell: no reruns over seeds (the projection prices them from the full plan)
        select=dataclasses.replace(derived.select, reseed=0))
    cap = batch_cap if batch_cap is not None else (None if on_gpu else CPU_BATCH_CAP)
    if cap is not None and cap < 1:
        raise ConfigError(f"--smoke-batch-cap must be >= 1, got {cap}")
    plan = build_plan(derived)
    cells, skipped = [], []
    for cell in plan.cells:
        problem = _data_problem(cell)
        if problem is not None:
            skipped.append((cell.id, problem))
            continue
        config = search_space.apply_values(copy.deepcopy(cell.config), cell.params, worst_case_values(cell.params))
        train = config.setdefault("train", {})
        defaults = TrainConfig()
        batch = int(train.get("batch_size", defaults.batch_size))
        accumulate = int(train.get("effective_batch_size", defaults.effective_batch_size)) // batch
        if cap is not None and batch > cap:
            batch = cap
        train.update(batch_size=batch, effective_batch_size=batch * accumulate,
                     max_epochs=min(SMOKE_EPOCHS, int(train.get("max_epochs", defaults.max_epochs))), min_epochs=0,
                     max_steps_per_epoch=SMOKE_STEPS, max_eval_batches=SMOKE_EVAL_BATCHES)
        resources = dict(cell.resources)
        if not on_gpu:
            resources = {"cpu": min(1.0, cpus), "gpu": 0.0}
        else:
            resources["cpu"] = min(resources["cpu"], cpus)
        cells.append(dataclasses.replace(cell, trials=1, reseeds=0, params=(), config=config, resources=resources))
    return Rehearsal(spec=derived, plan=Plan(spec=derived, cells=tuple(cells)), full_plan=full_plan,
                     skipped=skipped, fallbacks=fallbacks, batch_cap=cap)


# ---- measuring -----------------------------------------------------------------------------------------


class Collector:
    """A Tune callback (built lazily: this module stays torch/ray-free) keeping, per cell, the last epoch's
    timings and the trial's final result."""

    @staticmethod
    def make():
        from ray.tune import Callback

        class _Collector(Callback):
            def __init__(self):
                self.epochs: dict[str, dict] = {}
                self.final: dict[str, dict] = {}

            def on_trial_result(self, iteration, trials, trial, result, **info):
                if "train_seconds" in result:
                    self.epochs[trial.config["cell_id"]] = dict(result)

            def on_trial_complete(self, iteration, trials, trial, **info):
                self.final[trial.config["cell_id"]] = dict(trial.last_result or {})

            def on_trial_error(self, iteration, trials, trial, **info):
                from benchmark.sweep.failures import trial_error_text

                self.final[trial.config["cell_id"]] = {**(trial.last_result or {}), "status": "error",
                                                       "error": trial_error_text(trial)}

        return _Collector()


def measure(cell, epoch: dict | None, final: dict | None) -> dict[str, Any]:
    """One row of the rehearsal table (plain JSON types)."""
    # A trial that never reported its end (the rehearsal was interrupted) is "not run", never "ok".
    status = (final.get("status") or "error") if final else "not run"
    final = final or {}
    row: dict[str, Any] = {"cell_id": cell.id, "vlsm": cell.vlsm, "learner": cell.learner, "dataset": cell.dataset,
                           "status": status, "error": str(final.get("error") or ""),
                           "batch_size": cell.config["train"]["batch_size"],
                           "effective_batch_size": cell.config["train"]["effective_batch_size"],
                           "precision": cell.config["train"].get("precision", "auto")}
    if status == "not run":
        row["error"] = "no result: the rehearsal stopped before this trial ended"
    if epoch:
        steps = epoch.get("optimizer_steps") or 0
        row.update(seconds_per_step=epoch["train_seconds"] / steps if steps else None,
                   images_per_step=epoch["train_images"] / steps if steps else None,
                   train_seconds_per_image=epoch["train_seconds"] / max(epoch["train_images"], 1),
                   val_seconds_per_image=(epoch["val_seconds"] / epoch["val_images"]) if epoch.get("val_images") else None)
    gpu = final.get("peak_gpu_mem_mb")
    row["peak_mem_mb"] = gpu if isinstance(gpu, (int, float)) and gpu > 0 else final.get("peak_rss_mb")
    row["peak_mem_kind"] = "GPU" if isinstance(gpu, (int, float)) and gpu > 0 else "RSS"
    row["trial_seconds"] = final.get("trial_seconds")
    return row


def measured_rates(run_dir) -> tuple[dict[tuple[str, str], tuple[float, int]], float, str]:
    """From a rehearsal folder: {(vlsm, learner): (slot seconds per train+val image, cells)}, the median
    fixed seconds per trial, and a label. Per image = (train x t_train + val x t_val) / (train + val) with the
    dataset's card counts, so the price of validation is folded in as `plan --estimate` expects."""
    from benchmark.plan.estimate import split_sizes

    info = json.loads(RunDir(run_dir).smoke_marker.read_text())
    per: dict[tuple[str, str], list[float]] = {}
    fixed = []
    for r in info.get("cells", []):
        t, v = r.get("train_seconds_per_image"), r.get("val_seconds_per_image")
        if r.get("status") != "ok" or t is None:
            continue
        try:
            n_train, n_val = split_sizes(r["dataset"])
        except (ValueError, FileNotFoundError, KeyError):
            n_train, n_val = 1, 0
        per.setdefault((r["vlsm"], r["learner"]), []).append(
            (n_train * t + n_val * (v if v is not None else t)) / (n_train + n_val))
        if r.get("fixed_seconds") is not None:
            fixed.append(r["fixed_seconds"])
    rates = {k: (statistics.mean(v), len(v)) for k, v in per.items()}
    where = info.get("device", "?")
    cap = info.get("batch_cap")
    label = f"rehearsal {run_dir} on {where}" + (f", batch <= {cap}" if cap else "")
    return rates, (statistics.median(fixed) if fixed else 0.0), label


# ---- running -------------------------------------------------------------------------------------------


def run_rehearsal(spec, storage, *, address=None, num_cpus=None, num_gpus=None, batch_cap=None,
                  verbose=False, trainable=None) -> int:
    """Run the rehearsal, print its table and projection; 0 when every present cell is ok."""

    import ray

    from benchmark.sweep.coordinator import run_sweep
    from benchmark.sweep.ray_session import connect_ray
    from benchmark.sweep.storage import check_storage

    storage = check_storage(storage)
    started = connect_ray(address, num_cpus, num_gpus, verbose)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        gpus = max((n["Resources"].get("GPU", 0.0) for n in nodes), default=0.0)
        cpus = max((n["Resources"].get("CPU", 0.0) for n in nodes), default=1.0)
        reh = build_rehearsal(spec, on_gpu=gpus > 0, cpus=cpus, batch_cap=batch_cap)
        reh.device = _device_words(gpus)
        _announce(reh)
        run_dir = storage / reh.spec.name
        if run_dir.exists():
            if not is_rehearsal(run_dir):
                from trainables.config import ConfigError

                raise ConfigError(f"{run_dir} exists and is not a rehearsal folder; move it away")
            shutil.rmtree(run_dir)  # a rehearsal always starts over
        run_dir.mkdir(parents=True)
        _write_marker(run_dir, reh, rows=[], status="running")
        collector = Collector.make()
        t0 = time.time()
        result = None
        if reh.plan.cells:
            result = run_sweep(reh.spec, storage, plan=reh.plan, callbacks=[collector], trainable=trainable,
                               verbose=verbose)
        wall = time.time() - t0
        rows = []
        for cell in reh.plan.cells:
            row = measure(cell, collector.epochs.get(cell.id), collector.final.get(cell.id))
            epoch = collector.epochs.get(cell.id) or {}
            fin = collector.final.get(cell.id) or {}
            if fin.get("trial_seconds") is not None and epoch:
                # Everything but the epochs' training and validation: model build, data, test, checkpoints.
                row["fixed_seconds"] = max(0.0, fin["trial_seconds"] - SMOKE_EPOCHS * (
                    epoch.get("train_seconds", 0.0) + epoch.get("val_seconds", 0.0)))
            rows.append(row)
        _write_marker(run_dir, reh, rows=rows, status="done", wall_seconds=wall)
        text = format_report(reh, rows, run_dir, wall)
        RunDir(run_dir).smoke_table.write_text(text + "\n")
        print(text, flush=True)
        interrupted = result is not None and result.interrupted
        return 130 if interrupted else (0 if all(r["status"] == "ok" for r in rows) else 1)
    finally:
        if started:
            ray.shutdown()


def _device_words(gpus: float) -> str:
    if gpus <= 0:
        return "cpu"
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{gpus:g} GPU(s)"
    except Exception:  # noqa: BLE001
        return f"{gpus:g} GPU(s)"


def _announce(reh: Rehearsal) -> None:
    bar = "!" * 100
    for f in reh.fallbacks:
        arch = f.config if f.config is not None else "its default architecture"
        print(f"{bar}\nSMOKE: vlsms.{f.vlsm}.weights {f.weights!r} cannot be loaded here ({f.reason});\n"
              f"SMOKE: rehearsing {f.vlsm} with a RANDOM INIT of {arch} instead (same architecture and image "
              f"size; its Dice means nothing)\n{bar}", flush=True)
    where = "GPU: real batch sizes" if reh.batch_cap is None else f"batch capped at {reh.batch_cap} (accumulation kept)"
    print(f"SMOKE {reh.spec.name}: {len(reh.plan.cells)} cell(s) to rehearse, {len(reh.skipped)} skipped "
          f"(no data); {SMOKE_EPOCHS} epochs x {SMOKE_STEPS} optimizer steps, eval on {SMOKE_EVAL_BATCHES} "
          f"batch; {reh.device}, {where}", flush=True)


def _write_marker(run_dir: Path, reh: Rehearsal, rows: list[dict], status: str, wall_seconds: float | None = None):
    info = {"kind": "tunevlseg rehearsal (run --smoke): not results", "spec": reh.full_plan.spec.name,
            "spec_path": reh.full_plan.spec.path, "status": status, "device": reh.device,
            "batch_cap": reh.batch_cap, "epochs": SMOKE_EPOCHS, "steps_per_epoch": SMOKE_STEPS,
            "eval_batches": SMOKE_EVAL_BATCHES, "wall_seconds": wall_seconds,
            "random_init": [dataclasses.asdict(f) for f in reh.fallbacks],
            "skipped": [{"cell_id": c, "reason": r} for c, r in reh.skipped], "cells": rows}
    marker = RunDir(run_dir).smoke_marker
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=1, default=str))
    os.replace(tmp, marker)


def _f(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def format_report(reh: Rehearsal, rows: list[dict], run_dir: Path, wall: float) -> str:
    from benchmark.plan import estimate as E

    width = max([len(r["cell_id"]) for r in rows] + [len(c) for c, _ in reh.skipped] + [4])
    random_init = {f.vlsm for f in reh.fallbacks}
    lines = [f"rehearsal of {reh.full_plan.spec.name} ({reh.device}; {wall:.0f} s wall): "
             f"{sum(r['status'] == 'ok' for r in rows)}/{len(rows)} cells ok, {len(reh.skipped)} skipped"]
    head = f"{'cell':<{width}}  {'result':<7} {'batch':>7} {'prec':>10} {'s/step':>8} {'img/step':>8} " \
           f"{'peak MiB':>9}  init"
    lines += [head, "-" * len(head)]
    for r in rows:
        batch = f"{r['batch_size']}x{r['effective_batch_size'] // r['batch_size']}"
        init = "RANDOM" if r["vlsm"] in random_init else "weights"
        lines.append(f"{r['cell_id']:<{width}}  {r['status']:<7} {batch:>7} {r['precision']:>10} "
                     f"{_f(r.get('seconds_per_step'), '.2f'):>8} {_f(r.get('images_per_step'), '.0f'):>8} "
                     f"{_f(r.get('peak_mem_mb'), '.0f'):>9}  {init} {r['peak_mem_kind']}")
        if r["status"] != "ok":
            lines.append(f"{'':<{width}}  error: {r['error'][:300]}")
    for cid, reason in reh.skipped:
        lines.append(f"{cid:<{width}}  skipped  ({reason})")
    if reh.batch_cap is not None:
        lines.append(f"note: batch capped at {reh.batch_cap} on this machine (accumulation steps kept); the "
                     "spec's own batch sizes were not rehearsed")
    for f in reh.fallbacks:
        lines.append(f"note: {f.vlsm}: RANDOM INIT of {f.config or 'the default architecture'} "
                     f"(weights {f.weights!r}: {f.reason})")
    lines.append("note: s/step is the second epoch's (after warm-up); peak memory is the trial's "
                 + ("GPU allocator peak" if reh.batch_cap is None else "process peak RSS"))
    # Projection of the full spec from the measured step times: the same numbers as
    # `tunevlseg plan SPEC --estimate --from RUN_DIR`.
    if any(r["status"] == "ok" for r in rows):
        rates, fixed, label = measured_rates(run_dir)
        try:
            est = E.estimate(reh.full_plan.cells, sizes=_sizes_cache(), measured=rates, run_label=label,
                             overhead_seconds=fixed)
            lines += ["", E.format_estimate(est, reh.full_plan.spec.name)]
            if reh.batch_cap is not None:
                lines.append("note: measured on this machine at the capped batch: CPU slot-hours, not GPU-hours")
        except (ValueError, FileNotFoundError) as e:
            lines.append(f"projection unavailable: {e}")
        spec_arg = reh.full_plan.spec.path or reh.full_plan.spec.name
        lines.append(f"same projection: tunevlseg plan {spec_arg} --estimate --from {run_dir}")
    return "\n".join(lines)


def _sizes_cache():
    from benchmark.plan.estimate import split_sizes

    cache: dict[str, tuple[int, int]] = {}

    def sizes(ds: str) -> tuple[int, int]:
        if ds not in cache:
            cache[ds] = split_sizes(ds)
        return cache[ds]

    return sizes
