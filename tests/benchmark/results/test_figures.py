"""Figures: PNGs written from a synthetic trial table, non-empty and of sensible size; skipped without data."""

import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.results import figures as F
from benchmark.results import tables as T

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_trials(seed: int = 0) -> pd.DataFrame:
    """Three learners x three datasets x 8 trials with varied depth / lr / wd, plus failed and E2E rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for vlsm, learner in [("clipseg", "coop"), ("clipseg", "vpt"), ("cris", "cocoop"), ("clipseg", "e2e")]:
        for dataset in ("kvasir", "busi", "voc"):
            for i in range(8):
                depth = np.nan if learner == "e2e" else float(1 + (i * 3) % 11)
                rows.append(dict(vlsm=vlsm, learner=learner, dataset=dataset, variant="default",
                                 status="ok" if i < 7 else "error", trial_index=i, trial_id=f"{learner}{dataset}{i}",
                                 test_dice=0.4 + 0.04 * (depth if depth == depth else 5) / 11 + rng.uniform(0, .3),
                                 objective=rng.uniform(.1, 1), hp_prompt_depth=depth,
                                 hp_lr=10 ** rng.uniform(-5, -2.3), hp_weight_decay=10 ** rng.uniform(-5, -2)))
    return T.check_trials(pd.DataFrame(rows))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def test_write_figures_makes_three_readable_pngs(tmp_path):
    made = F.write_figures(synthetic_trials(), tmp_path)
    assert sorted(p.name for p in made) == ["dice_lr_wd.png", "dice_vs_prompt_depth.png", "table3_heatmap.png"]
    for p in made:
        w, h = png_size(p)
        assert p.stat().st_size > 15_000, p  # real content, not an empty canvas
        assert 500 <= w <= 4000 and 300 <= h <= 3000, (p.name, w, h)
    # one panel per (VLSM, learner): depth has no E2E panel (no prompt depth), lr x wd does
    w_depth, _ = png_size(tmp_path / "dice_vs_prompt_depth.png")
    w_lr, _ = png_size(tmp_path / "dice_lr_wd.png")
    assert w_lr > w_depth


def test_depth_figure_is_skipped_without_depths_and_heatmap_without_results(tmp_path):
    trials = synthetic_trials().drop(columns=["hp_prompt_depth"])
    assert F.dice_vs_prompt_depth(trials, tmp_path / "d.png") is None
    assert not (tmp_path / "d.png").exists()
    failed = trials.assign(status="error")
    assert F.table_heatmap(T.table3(failed), tmp_path / "h.png") is None
    assert F.write_figures(failed, tmp_path / "none") == []


def test_heatmap_only_for_cells_with_results(tmp_path):
    trials = synthetic_trials()
    only = trials[(trials["learner"] == "coop") & (trials["dataset"] == "kvasir")]
    full = F.table_heatmap(T.table3(trials), tmp_path / "full.png")
    one = F.table_heatmap(T.table3(only), tmp_path / "one.png")
    (wf, hf), (wo, ho) = png_size(full), png_size(one)
    assert wo < wf and ho < hf  # empty rows and columns are left out, not drawn grey


def test_r2_fit():
    x = np.arange(1, 12, dtype=float)
    slope, intercept, r2 = F._r2(x, 2 * x + 1)
    assert (slope, intercept, r2) == pytest.approx((2.0, 1.0, 1.0))
    assert F._r2(np.ones(5), np.arange(5.0)) is None
    assert 0 <= F._r2(x, np.random.default_rng(0).normal(size=11))[2] < 0.9


# ---- issue 19: per-dataset fits, one lr x wd view, readable log axes, distinct datasets ------------------


def _offset_trials() -> pd.DataFrame:
    """Within each dataset Dice rises exactly with depth; the datasets sit 70 points apart."""
    rows = []
    for ds, base in (("kvasir", 0.10), ("busi", 0.80)):
        for i, depth in enumerate((1, 3, 5, 7, 9)):
            rows.append(dict(vlsm="clipseg", learner="coop", dataset=ds, variant="default", status="ok",
                             trial_index=i, trial_id=f"{ds}{i}", objective=0.5, hp_prompt_depth=float(depth),
                             test_dice=base + 0.01 * depth - (0.08 if ds == "busi" and depth > 5 else 0),
                             hp_lr=1e-3, hp_weight_decay=1e-4))
    return T.check_trials(pd.DataFrame(rows))


def test_depth_fits_are_per_dataset_not_pooled_over_the_offset():
    t = _offset_trials()
    fits = F.fits_by_dataset(t, "hp_prompt_depth")
    assert fits["kvasir"][2] == pytest.approx(1.0) and fits["kvasir"][3] == 5
    assert fits["kvasir"][0] == pytest.approx(1.0)  # +1 Dice point per layer, as generated
    pooled = F._r2(t["hp_prompt_depth"].to_numpy(float), 100 * t["test_dice"].to_numpy(float))[2]
    assert pooled < 0.05  # one pooled line would have said: depth explains nothing


def _overlaps(fig, ax, which) -> list:
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    labels = [l for l in (ax.get_xticklabels(which="both") if which == "x" else ax.get_yticklabels(which="both"))
              if l.get_visible() and l.get_text()]
    boxes = [l.get_window_extent(r) for l in labels]
    return [(labels[i].get_text(), labels[j].get_text()) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
            if boxes[i].overlaps(boxes[j])]


def test_lr_wd_view_has_non_overlapping_log_ticks_and_spreads_coinciding_trials():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    rows = []
    # a panel spanning less than one decade (the case whose minor labels ran into each other), and the
    # same configuration in three datasets (a learner's TPE seed repeats its first draws in every cell)
    for k, ds in enumerate(("kvasir", "busi", "voc")):
        for i, (lr, wd) in enumerate(((1.5e-5, 2e-5), (3e-5, 4e-5), (6e-5, 9e-5))):
            rows.append(dict(vlsm="clipseg", learner="shared_attention", dataset=ds, variant="default", status="ok",
                             trial_index=i, trial_id=f"{ds}{i}", objective=0.5, test_dice=0.2 + 0.3 * k,
                             hp_lr=lr, hp_weight_decay=wd, hp_prompt_depth=1.0))
    fig = F.lr_wd_figure(T.check_trials(pd.DataFrame(rows)))
    FigureCanvasAgg(fig)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert not _overlaps(fig, ax, "x") and not _overlaps(fig, ax, "y")
    assert [l.get_text() for l in ax.get_xticklabels(which="minor") if l.get_visible() and l.get_text()] == []
    xs = np.concatenate([c.get_offsets()[:, 0] for c in ax.collections])
    assert len(np.unique(np.round(xs, 12))) == 9  # three datasets at one configuration: three places
    colours = np.concatenate([c.get_array() for c in ax.collections])
    assert sorted(set(np.round(colours, 6))) == [20.0, 50.0, 80.0]  # coloured by test Dice (%)


def test_dataset_colours_are_distinct_and_colour_blind_safe():
    from matplotlib.colors import to_hex

    from benchmark.results.palette import OKABE_ITO

    styles = F._dataset_styles(["mini_polyp", "mini_skin", "mini_echo"])
    colours = [to_hex(c) for c, _ in styles.values()]
    assert len(set(colours)) == 3 and set(c.upper() for c in colours) <= set(OKABE_ITO)
