"""What each (VLSM, learner) costs against the Dice it reaches: `efficiency.csv` and a Pareto figure.

Per (VLSM, learner, variant), from the trial rows alone:
- trainable parameters: median over its finished trials (a learner's count depends on hyperparameters such as
  the prompt depth, so min and max are kept beside it);
- peak device memory: the largest `peak_gpu_mem_mb` of its trials. Only a GPU trial measures it; on CPU the
  column is empty, never a guess;
- median trial time: median wall-clock `seconds` of its search trials (any status: a failed trial cost time);
- tuning compute per cell: the summed wall-clock hours of all of a cell's search trials (one device per
  trial), as the mean over the row's datasets, and the total over them. GPU-hours where the trials ran on a
  GPU (`gpu_name` set), CPU-hours otherwise; the `device` column says which, and names the GPU;
- selected Dice: mean over datasets of the test Dice of each cell's selected trial (the spec's `select` rule,
  as in Table 3).

With a price per device-hour (`tunevlseg tables --price-per-hour`) the hours also appear as money. Reruns of
a selected configuration with further seeds are no part of the search and are left out of the tuning cost.
Timings of a run on a shared or contended machine are that machine's: the report names the devices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.plan.spec import Selection
from benchmark.results import selection as sel
from benchmark.results import tables as T
from trainables.protocol import STATUS_OK

CSV = "efficiency.csv"
FIGURE = "dice_vs_cost.png"
ROW_KEYS = ["vlsm", "learner", "variant"]


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    """The column as floats; all NaN when the rows lack it (a Parquet file written without it)."""
    if column not in frame:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def _device(cell_rows: pd.DataFrame) -> str:
    names = sorted({str(g) for g in cell_rows.get("gpu_name", pd.Series(dtype=object)).dropna() if str(g)})
    return "GPU: " + ", ".join(names) if names else "CPU"


def table(trials: pd.DataFrame, rule: Selection, price_per_hour: float | None = None) -> pd.DataFrame:
    search = sel.search_only(trials)
    chosen = sel.select(search, rule)
    rows = []
    for key, g in search.groupby(ROW_KEYS, sort=True, dropna=False):
        ok = g[g["status"] == STATUS_OK]
        params = _numeric(ok, "trainable_params").dropna()
        # a CPU trial reports 0 (nothing measured there): only rows that name a GPU carry a memory figure
        names = g["gpu_name"] if "gpu_name" in g else pd.Series(None, index=g.index, dtype=object)
        on_gpu = names.notna() & (names.astype(str) != "")
        mem = _numeric(g, "peak_gpu_mem_mb")[on_gpu].dropna()
        secs = _numeric(g, "seconds")
        per_cell = secs.groupby(g["dataset"]).sum(min_count=1) / 3600
        picked = chosen[(chosen[ROW_KEYS] == pd.Series(dict(zip(ROW_KEYS, key)))).all(axis=1)]
        dice = pd.to_numeric(picked["test_dice"], errors="coerce") * 100
        row = {**dict(zip(ROW_KEYS, key)), "device": _device(g), "datasets": int(g["dataset"].nunique()),
               "trials": len(g), "trials_per_cell": len(g) / max(int(g["dataset"].nunique()), 1),
               "trainable_params": float(params.median()) if len(params) else np.nan,
               "trainable_params_min": float(params.min()) if len(params) else np.nan,
               "trainable_params_max": float(params.max()) if len(params) else np.nan,
               "peak_mem_mb": float(mem.max()) if len(mem) else np.nan,
               "median_trial_s": float(secs.median()) if secs.notna().any() else np.nan,
               "hours_per_cell": float(per_cell.mean()) if per_cell.notna().any() else np.nan,
               "hours_total": float(per_cell.sum()) if per_cell.notna().any() else np.nan,
               "selected_dice": float(dice.mean()) if dice.notna().any() else np.nan,
               "selected_dice_datasets": int(dice.notna().sum())}
        if price_per_hour is not None:
            row["cost_per_cell"] = row["hours_per_cell"] * price_per_hour
            row["cost_total"] = row["hours_total"] * price_per_hour
        rows.append(row)
    return pd.DataFrame(rows)


def pareto(frame: pd.DataFrame, cost: str = "hours_per_cell", value: str = "selected_dice") -> pd.Series:
    """True for rows no other row beats on both axes (less or equal cost and higher or equal Dice, one
    strictly)."""
    c, v = frame[cost].to_numpy(dtype=float), frame[value].to_numpy(dtype=float)
    ok = np.isfinite(c) & np.isfinite(v)
    front = []
    for i in range(len(frame)):
        dominated = ok & (c <= c[i]) & (v >= v[i]) & ((c < c[i]) | (v > v[i]))
        front.append(bool(ok[i] and not dominated.any()))
    return pd.Series(front, index=frame.index)


def _hours(x: float) -> str:
    if not np.isfinite(x):
        return "–"
    return f"{x * 60:.1f} min" if x < 1 else f"{x:.2f} h"


def _count(x: float) -> str:
    if not np.isfinite(x):
        return "–"
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.1f} k" if x >= 1e3 else f"{x:.0f}"


def report_lines(eff: pd.DataFrame, figure: str | None, price_per_hour: float | None) -> list[str]:
    lines = ["## Efficiency and cost", ""]
    if eff.empty:
        return lines + ["*No trials.*", ""]
    devices = sorted(set(eff["device"]))
    unit = "GPU-hours" if all(d.startswith("GPU") for d in devices) else \
        "CPU-hours" if devices == ["CPU"] else "device-hours (GPU or CPU: see the device column)"
    lines += [f"Per row: trainable parameters (median over its trials), peak device memory (measured on GPU only), "
              f"median wall-clock time of a trial, the tuning compute of one cell (all its search trials, in "
              f"{unit}; mean over datasets) and the mean selected test Dice. Devices: {', '.join(devices)}. "
              "Times are those of the machine that ran (see Provenance); on a machine shared with other work they "
              f"are upper bounds. Per row in `{CSV}`"
              + (f"; cost at {price_per_hour:g} per device-hour." if price_per_hour is not None else "."), "",
              "| Model | Context Learner | Variant | Trainable params | Peak memory (MB) | Median trial | "
              "Trials per cell | Tuning per cell | Selected Dice (%) |"
              + (" Cost per cell |" if price_per_hour is not None else ""),
              "|:---|:---|:---|---:|---:|---:|---:|---:|---:|" + ("---:|" if price_per_hour is not None else "")]
    for r in eff.itertuples(index=False):
        mem = f"{r.peak_mem_mb:.0f}" if np.isfinite(r.peak_mem_mb) else "–"
        med = f"{r.median_trial_s:.1f} s" if np.isfinite(r.median_trial_s) else "–"
        line = (f"| {T.vlsm_name(r.vlsm)} | {T.row_label(r.learner)} | {r.variant} | {_count(r.trainable_params)} "
                f"| {mem} | {med} | {r.trials_per_cell:g} | {_hours(r.hours_per_cell)} | {T.fmt(r.selected_dice)} |")
        if price_per_hour is not None:
            line += f" {r.cost_per_cell:.3g} |"
        lines.append(line)
    lines.append("")
    if figure:
        lines += [f"![Dice against cost]({figure})", ""]
    return lines


def figure(eff: pd.DataFrame, path: str | Path, variant: str = "default") -> Path | None:
    """Two panels, selected Dice against tuning compute per cell and against trainable parameters (log x),
    the Pareto front of each (cheaper and better than every other row) joined by a step line."""
    from matplotlib.figure import Figure

    e = eff[(eff["variant"] == variant) & eff["selected_dice"].notna()].reset_index(drop=True)
    if e.empty:
        return None
    unit = "GPU-hours" if all(d.startswith("GPU") for d in e["device"]) else "CPU-hours" \
        if all(d == "CPU" for d in e["device"]) else "device-hours"
    fig = Figure(figsize=(11, 4.4), dpi=130, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (col, label) in zip(axes, [("hours_per_cell", f"tuning compute per cell ({unit})"),
                                       ("trainable_params", "trainable parameters")]):
        d = e[np.isfinite(e[col].to_numpy(dtype=float)) & (e[col] > 0)]
        if d.empty:
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"no {label} recorded", ha="center", va="center", transform=ax.transAxes)
            continue
        front = pareto(d, col)
        ax.scatter(d.loc[~front, col], d.loc[~front, "selected_dice"], s=30, color="0.55", zorder=3,
                   label="dominated")
        ax.scatter(d.loc[front, col], d.loc[front, "selected_dice"], s=42, color="#D55E00", zorder=4,
                   label="Pareto front")
        f = d[front].sort_values(col)
        ax.step(f[col], f["selected_dice"], where="post", color="#D55E00", lw=1, alpha=0.7)
        usual = int(d["trials_per_cell"].mode().iloc[0])
        for r, dy in zip(d.itertuples(index=False), _label_offsets(d[col], d["selected_dice"])):
            note = f" ({r.trials_per_cell:g} trial/cell)" if r.trials_per_cell != usual else ""
            ax.annotate(f"{T.vlsm_name(r.vlsm)} · {T.row_label(r.learner)}{note}",
                        (getattr(r, col), r.selected_dice), textcoords="offset points", xytext=(4, 3 + dy),
                        fontsize=7, va="bottom",
                        # a label pushed away from its point keeps a thin line to it
                        arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5", shrinkA=0, shrinkB=3) if dy else None)
        ax.set_xscale("log")
        lo, hi = float(d[col].min()), float(d[col].max())
        ax.set_xlim(lo / 1.6, hi * 3.5)  # room for the labels right of the last points
        ax.set_xlabel(label + " (log scale)")
        ax.set_ylabel("selected test Dice (%), mean over datasets")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper right")
    fig.suptitle(f"Dice against cost ({variant} variant; up and left is better)", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _label_offsets(x: pd.Series, y: pd.Series, gap: float = 10.0) -> list[float]:
    """Vertical offsets (points) that keep labels of nearby points (on a log x axis) from printing over each
    other: going up in y, a label close in x to an earlier one is pushed above it."""
    lx = np.log10(x.to_numpy(dtype=float))
    yv = y.to_numpy(dtype=float)
    span = max(float(np.ptp(yv)), 1e-9)
    pts_per_unit = 250.0 / span  # the plotting area is about 250 points tall
    placed: list[tuple[float, float]] = []  # (log x, label y in points)
    offsets = [0.0] * len(yv)
    for i in np.argsort(yv, kind="stable"):
        at = yv[i] * pts_per_unit
        for px, py in sorted(placed, key=lambda p: p[1]):
            if abs(px - lx[i]) < 0.35 and abs(at - py) < gap:
                at = py + gap
        offsets[i] = at - yv[i] * pts_per_unit
        placed.append((lx[i], at))
    return offsets


def write(trials: pd.DataFrame, rule: Selection, out_dir: str | Path, figures: bool = True,
          price_per_hour: float | None = None) -> tuple[list[str], list[Path]]:
    out_dir = Path(out_dir)
    eff = table(trials, rule, price_per_hour)
    (out_dir / CSV).write_text(eff.to_csv(index=False, float_format="%.6g"), encoding="utf-8")
    written = [out_dir / CSV]
    fig = figure(eff, out_dir / FIGURE) if figures and not eff.empty else None
    if fig is not None:
        written.append(fig)
    return report_lines(eff, fig.name if fig else None, price_per_hour), written
