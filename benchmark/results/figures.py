"""The paper's figures as PNG files, from trial rows: matplotlib only, no pyplot state, no torch.

- `dice_vs_prompt_depth.png`: test Dice of every finished trial against its prompt depth, one panel per
  (learner, VLSM), coloured by dataset, with a least-squares line and its R² (paper Fig. 5/6, appendix A).
- `dice_vs_lr.png`, `dice_vs_weight_decay.png`: the same against learning rate / weight decay on log axes
  (paper Fig. 7, appendix B, split in two so each axis is readable).
- `table3_heatmap.png`: Table 3's selected test Dice as a heat map, rows = VLSM × learner, columns = datasets.

Figures are built on `matplotlib.figure.Figure` directly and saved through the Agg canvas, so nothing
depends on (or changes) the process-wide pyplot backend.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from benchmark.results import tables as T

DPI = 130
# Paper Fig. 6 panel order (a)–(h); pairs beyond these follow in name order.
PANEL_ORDER = (
    ("clipseg", "coop"), ("cris", "coop"), ("clipseg", "cocoop"), ("cris", "cocoop"), ("clipseg", "vpt"),
    ("clipseg", "shared_attention"), ("clipseg", "shared_separate"), ("clipseg", "maple"),
)


def _dataset_colors(keys) -> dict[str, tuple]:
    """One fixed colour per dataset across every panel and figure (paper order first)."""
    from matplotlib import colormaps

    order = [d.key for d in T.DATASETS] + sorted(set(keys) - {d.key for d in T.DATASETS})
    cmap = colormaps["tab10"] if len(order) <= 10 else colormaps["tab20"]
    return {k: cmap(i % cmap.N) for i, k in enumerate(order)}


def _dataset_label(key: str) -> str:
    return next((d.display for d in T.DATASETS if d.key == key), key)


def _finished(trials: pd.DataFrame, x_col: str, variant: str) -> pd.DataFrame:
    if x_col not in trials.columns:
        return trials.iloc[0:0]
    t = trials[(trials["status"] == "ok") & (trials["variant"] == variant)].copy()
    t[x_col] = pd.to_numeric(t[x_col], errors="coerce")
    t = t[np.isfinite(t[x_col].to_numpy(dtype=float)) & np.isfinite(t["test_dice"].to_numpy(dtype=float))]
    return t


def _panels(t: pd.DataFrame) -> list[tuple[str, str]]:
    present = set(zip(t["vlsm"], t["learner"]))
    return [p for p in PANEL_ORDER if p in present] + sorted(present - set(PANEL_ORDER))


def _r2(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float] | None:
    """Slope, intercept and R² of a least-squares line; None when x does not vary."""
    if len(x) < 2 or np.ptp(x) == 0:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    ss_res = float(((y - (slope * x + intercept)) ** 2).sum())
    return slope, intercept, (1.0 - ss_res / ss_tot) if ss_tot > 0 else 0.0


def scatter_grid(trials: pd.DataFrame, x_col: str, xlabel: str, path: str | Path, *, log_x: bool = False,
                 fit: bool = False, integer_x: bool = False, variant: str = "default",
                 title: str | None = None) -> Path | None:
    """Test Dice (%) vs `x_col`, one panel per (VLSM, learner); returns None when no trial has `x_col`."""
    t = _finished(trials, x_col, variant)
    if t.empty:
        return None
    panels = _panels(t)
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(max(3.6 * ncols + 1.8, 7.5), 3.0 * nrows + 0.9), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
    colors = _dataset_colors(t["dataset"].unique())
    handles = {}
    for ax, (vlsm, learner) in zip(axes, panels):
        p = t[(t["vlsm"] == vlsm) & (t["learner"] == learner)]
        for ds, g in p.groupby("dataset", sort=False):
            h = ax.scatter(g[x_col], 100 * g["test_dice"], s=18, alpha=0.75, color=colors[ds],
                           edgecolors="none", label=_dataset_label(ds))
            handles.setdefault(ds, h)
        name = f"{T.learner_name(learner)} · {T.vlsm_name(vlsm)}"
        x = p[x_col].to_numpy(dtype=float)
        line = _r2(np.log10(x) if log_x else x, 100 * p["test_dice"].to_numpy(dtype=float)) if fit else None
        if line is not None:
            slope, intercept, r2 = line
            xs = np.linspace(x.min(), x.max(), 50)
            ax.plot(xs, slope * (np.log10(xs) if log_x else xs) + intercept, color="0.25", lw=1.2, ls="--")
            name += f"  (R² = {r2:.2f})"
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        if log_x:
            ax.set_xscale("log")
        if integer_x:
            ax.set_xticks(range(int(x.min()), int(x.max()) + 1, max(1, math.ceil((x.max() - x.min() + 1) / 11))))
        ax.grid(True, alpha=0.3)
    for ax in axes[:: ncols]:
        ax.set_ylabel("Test Dice (%)")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    order = [k for k in colors if k in handles]
    fig.legend([handles[k] for k in order], [_dataset_label(k) for k in order], loc="outside right center",
               title="Dataset", fontsize=9, title_fontsize=9, frameon=False)
    fig.suptitle(title or f"Test Dice vs {xlabel.split(' (')[0].lower()}", fontsize=12)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def dice_vs_prompt_depth(trials: pd.DataFrame, path: str | Path, variant: str = "default") -> Path | None:
    return scatter_grid(trials, "hp_prompt_depth", "Prompt depth J", path, fit=True, integer_x=True,
                        variant=variant, title="Test Dice vs prompt depth\n(every finished trial; dashed: least-squares fit)")


def dice_vs_lr(trials: pd.DataFrame, path: str | Path, variant: str = "default") -> Path | None:
    return scatter_grid(trials, "hp_lr", "Learning rate (log)", path, log_x=True, variant=variant,
                        title="Test Dice vs learning rate\n(every finished trial)")


def dice_vs_weight_decay(trials: pd.DataFrame, path: str | Path, variant: str = "default") -> Path | None:
    return scatter_grid(trials, "hp_weight_decay", "Weight decay (log)", path, log_x=True, variant=variant,
                        title="Test Dice vs weight decay\n(every finished trial)")


def table_heatmap(table: T.Table, path: str | Path) -> Path | None:
    """Heat map of a results table's selected Dice; rows/columns with no value at all are left out."""
    dice = table.dice.to_numpy(dtype=float)
    rows = [i for i in range(len(table.rows)) if np.isfinite(dice[i]).any()]
    cols = [j for j in range(len(table.datasets)) if np.isfinite(dice[:, j]).any()]
    if not rows:
        return None
    m = dice[np.ix_(rows, cols)]
    fig = Figure(figsize=(1.0 * len(cols) + 3.8, 0.45 * len(rows) + 1.9), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    masked = np.ma.masked_invalid(m)
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="0.85")
    im = ax.imshow(masked, cmap=cmap, aspect="auto", vmin=np.nanmin(m), vmax=np.nanmax(m))
    mid = (np.nanmin(m) + np.nanmax(m)) / 2
    for a in range(m.shape[0]):
        for b in range(m.shape[1]):
            v = m[a, b]
            ax.text(b, a, T.fmt(v), ha="center", va="center", fontsize=8,
                    color="0.4" if not np.isfinite(v) else ("white" if v < mid else "black"))
    ax.set_xticks(range(len(cols)), [table.datasets[j].display for j in cols], rotation=35, ha="right")
    ax.set_yticks(range(len(rows)), [" · ".join(table.rows[i].labels) for i in rows])
    ax.set_xlabel("Dataset")
    ax.set_ylabel("VLSM · context learner")
    fig.colorbar(im, ax=ax, label="Test Dice (%)", shrink=0.9)
    ax.set_title(f"Table {table.number}: test Dice (%), selection = {table.selection}", fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_figures(trials: pd.DataFrame, out_dir: str | Path, table3: T.Table | None = None) -> list[Path]:
    """Every figure the trials allow, into `out_dir`; figures without data are skipped, never empty."""
    out_dir = Path(out_dir)
    made = [
        dice_vs_prompt_depth(trials, out_dir / "dice_vs_prompt_depth.png"),
        dice_vs_lr(trials, out_dir / "dice_vs_lr.png"),
        dice_vs_weight_decay(trials, out_dir / "dice_vs_weight_decay.png"),
        table_heatmap(table3 if table3 is not None else T.table3(trials), out_dir / "table3_heatmap.png"),
    ]
    return [p for p in made if p is not None]
