"""The paper's figures as PNG files, from trial rows: matplotlib only, no pyplot state, no torch.

- `dice_vs_prompt_depth.png`: test Dice of every finished trial against its prompt depth, one panel per
  (learner, VLSM), coloured by dataset, with one least-squares line and R² *per dataset* (paper Fig. 5/6,
  appendix A). One line over all datasets pooled would mostly fit the offset between datasets.
- `dice_lr_wd.png`: every finished trial at (learning rate, weight decay) on log axes, coloured by test Dice,
  one panel per (learner, VLSM), one marker per dataset (paper Fig. 7, appendix B). Trials of different
  cells that share a configuration (a learner's TPE seed repeats its first draws in every cell) are spread
  sideways by a small, stated offset instead of hiding each other.
- `table3_heatmap.png`: Table 3's selected test Dice as a heat map, rows = VLSM × learner, columns = datasets.

Datasets have one colour-blind-safe colour and marker each, the same in every figure (`benchmark.results.palette`).
Log axes carry labels at whole decades only, so tick labels never run into each other.

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
INT_DODGE = 0.025  # offset between datasets on an integer axis (prompt depth), as a share of the panel's span
# Paper Fig. 6 panel order (a)–(h); pairs beyond these follow in name order.
PANEL_ORDER = (
    ("clipseg", "coop"), ("cris", "coop"), ("clipseg", "cocoop"), ("cris", "cocoop"), ("clipseg", "vpt"),
    ("clipseg", "shared_attention"), ("clipseg", "shared_separate"), ("clipseg", "maple"),
)


def _dataset_styles(keys) -> dict[str, tuple[str, str]]:
    """{dataset: (colour, marker)}, fixed across every panel and figure (`benchmark.results.palette`)."""
    from benchmark.results.palette import dataset_styles

    return dataset_styles(keys)


def _decade_axis(axis, values) -> None:
    """Log axis from the decade below the smallest value to the one above the largest, labelled at whole
    decades only (minor ticks unlabelled): short spans no longer print 2×10⁻⁵, 3×10⁻⁵, ... over each other."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    lo, hi = (math.floor(math.log10(v.min())), math.ceil(math.log10(v.max()))) if len(v) else (-5, -2)
    hi = max(hi, lo + 1)
    # a little beyond the decades, so that a point on a bound (lr = 1e-5) is not cut in half by the frame
    axis.axes.set(**{f"{axis.axis_name}scale": "log", f"{axis.axis_name}lim": (10.0 ** (lo - 0.12), 10.0 ** (hi + 0.12))})
    axis.set_major_locator(LogLocator(base=10, subs=(1.0,), numticks=hi - lo + 2))
    axis.set_major_formatter(LogFormatterSciNotation(base=10))
    axis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10) * 1.0, numticks=100))
    axis.set_minor_formatter(NullFormatter())


def _int_shift(x: pd.Series, ds: str, styles: dict) -> float:
    """Sideways offset of dataset `ds` on an integer axis: its points and its fit line move together."""
    span = max(float(np.ptp(x.to_numpy(dtype=float))), 1.0)
    return INT_DODGE * span * (list(styles).index(ds) - (len(styles) - 1) / 2)


def fits_by_dataset(p: pd.DataFrame, x_col: str, log_x: bool = False) -> dict[str, tuple | None]:
    """Per dataset: (slope, intercept, R², n) of test Dice (%) on `x_col`; None where x does not vary."""
    out = {}
    for ds, g in p.groupby("dataset", sort=False):
        x = g[x_col].to_numpy(dtype=float)
        line = _r2(np.log10(x) if log_x else x, 100 * g["test_dice"].to_numpy(dtype=float))
        out[ds] = None if line is None else (*line, len(g))
    return out


def _dodge(x: np.ndarray, y: np.ndarray, step: float = 0.06) -> np.ndarray:
    """Points at the same (log x, log y) spread along x by `step` decades each, centred on the true value."""
    key = [f"{a:.4f},{b:.4f}" for a, b in zip(np.log10(x), np.log10(y))]
    out = np.log10(x).copy()
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(key):
        groups.setdefault(k, []).append(i)
    for idx in groups.values():
        for j, i in enumerate(idx):
            out[i] += (j - (len(idx) - 1) / 2) * step
    return 10 ** out


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
    styles = _dataset_styles(t["dataset"].unique())
    handles = {}
    for ax, (vlsm, learner) in zip(axes, panels):
        p = t[(t["vlsm"] == vlsm) & (t["learner"] == learner)]
        for ds, g in p.groupby("dataset", sort=False):
            colour, marker = styles[ds]
            # integer x (depth): datasets side by side at each value, not on top of each other
            shift = _int_shift(p[x_col], ds, styles) if integer_x else 0.0
            h = ax.scatter(g[x_col] + shift, 100 * g["test_dice"], s=22, alpha=0.85, color=colour, marker=marker,
                           edgecolors="0.15", linewidths=0.4, label=_dataset_label(ds), zorder=3)
            handles.setdefault(ds, h)
        name = f"{T.row_label(learner)} · {T.vlsm_name(vlsm)}"
        x = p[x_col].to_numpy(dtype=float)
        if fit:
            notes = []
            for ds, line in fits_by_dataset(p, x_col, log_x).items():
                if line is None:
                    notes.append(f"{_dataset_label(ds)}: x constant")
                    continue
                slope, intercept, r2, n = line
                xd = p.loc[p["dataset"] == ds, x_col].to_numpy(dtype=float)
                xs = np.linspace(xd.min(), xd.max(), 50)
                shift = _int_shift(p[x_col], ds, styles) if integer_x else 0.0
                ax.plot(xs + shift, slope * (np.log10(xs) if log_x else xs) + intercept, color=styles[ds][0],
                        lw=1.2, ls="--", zorder=2)
                notes.append(f"{_dataset_label(ds)}: R² {r2:.2f} (n={n})")
            # The box sits above Dice 100 (the axis is extended for it), so it never covers a point.
            ax.text(0.02, 0.985, "\n".join(notes), transform=ax.transAxes, va="top", ha="left", fontsize=7,
                    color="0.2", bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="0.8", alpha=0.9), zorder=4)
            n_lines = t["dataset"].nunique()
            ax.set_ylim(-3, 100 + 7.5 * n_lines + 6)
            ax.set_yticks(range(0, 101, 20))
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        if log_x:
            _decade_axis(ax.xaxis, x)
        if integer_x:
            ax.set_xticks(range(int(x.min()), int(x.max()) + 1, max(1, math.ceil((x.max() - x.min() + 1) / 11))))
        ax.grid(True, alpha=0.3)
    for ax in axes[:: ncols]:
        ax.set_ylabel("Test Dice (%)")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    order = [k for k in styles if k in handles]
    fig.legend([handles[k] for k in order], [_dataset_label(k) for k in order], loc="outside right center",
               title="Dataset", fontsize=9, title_fontsize=9, frameon=False)
    fig.suptitle(title or f"Test Dice vs {xlabel.split(' (')[0].lower()}", fontsize=12)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def dice_vs_prompt_depth(trials: pd.DataFrame, path: str | Path, variant: str = "default") -> Path | None:
    return scatter_grid(trials, "hp_prompt_depth", "Prompt depth J", path, fit=True, integer_x=True,
                        variant=variant, title="Test Dice vs prompt depth\n(every finished trial, datasets "
                        "offset slightly sideways; dashed: least-squares fit per dataset, its R² and number "
                        "of trials in the box)")


def lr_wd_figure(trials: pd.DataFrame, variant: str = "default", dodge: float = 0.1) -> Figure | None:
    """Paper Fig. 7: test Dice over (learning rate, weight decay), one panel per (VLSM, learner); None when no
    finished trial has both."""
    t = _finished(_finished(trials, "hp_lr", variant), "hp_weight_decay", variant)
    if t.empty:
        return None
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    panels = _panels(t)
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(max(3.5 * ncols + 2.6, 7.5), 3.1 * nrows + 1.0), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    styles = _dataset_styles(t["dataset"].unique())
    markers = {ds: "osD^vPX<>"[i % 9] for i, ds in enumerate(styles)}  # colour is taken by Dice here
    dice = 100 * t["test_dice"].to_numpy(dtype=float)
    norm, cmap = Normalize(vmin=float(dice.min()), vmax=float(dice.max())), colormaps["viridis"]
    handles = {}
    for ax, (vlsm, learner) in zip(axes, panels):
        p = t[(t["vlsm"] == vlsm) & (t["learner"] == learner)]
        x = _dodge(p["hp_lr"].to_numpy(dtype=float), p["hp_weight_decay"].to_numpy(dtype=float), dodge)
        for ds in p["dataset"].unique():
            m = (p["dataset"] == ds).to_numpy()
            marker = markers[ds]
            ax.scatter(x[m], p.loc[m, "hp_weight_decay"], c=100 * p.loc[m, "test_dice"], cmap=cmap, norm=norm,
                       marker=marker, s=46, edgecolors="0.15", linewidths=0.6, zorder=3)
            handles.setdefault(ds, marker)
        _decade_axis(ax.xaxis, t["hp_lr"])  # the same decades in every panel, so panels compare at a glance
        _decade_axis(ax.yaxis, t["hp_weight_decay"])
        ax.set_title(f"{T.row_label(learner)} · {T.vlsm_name(vlsm)}", fontsize=10)
        ax.set_xlabel("Learning rate")
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[:: ncols]:
        ax.set_ylabel("Weight decay")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    from matplotlib.cm import ScalarMappable
    from matplotlib.lines import Line2D

    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[: len(panels)]), label="Test Dice (%)",
                 shrink=0.8)
    fig.legend([Line2D([], [], ls="", marker=mk, color="0.4", markeredgecolor="0.15") for mk in handles.values()],
               [_dataset_label(k) for k in handles], loc="outside lower center", ncols=min(6, len(handles)),
               title="Dataset (marker)", fontsize=9, title_fontsize=9, frameon=False)
    fig.suptitle("Test Dice over learning rate × weight decay (every finished trial)\n"
                 f"trials at the same configuration are spread sideways by {dodge:g} decade each", fontsize=11)
    return fig


def dice_lr_wd(trials: pd.DataFrame, path: str | Path, variant: str = "default") -> Path | None:
    fig = lr_wd_figure(trials, variant)
    if fig is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


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
        dice_lr_wd(trials, out_dir / "dice_lr_wd.png"),
        table_heatmap(table3 if table3 is not None else T.table3(trials), out_dir / "table3_heatmap.png"),
    ]
    return [p for p in made if p is not None]
