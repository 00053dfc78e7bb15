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


def test_write_figures_makes_four_readable_pngs(tmp_path):
    made = F.write_figures(synthetic_trials(), tmp_path)
    assert sorted(p.name for p in made) == ["dice_vs_lr.png", "dice_vs_prompt_depth.png",
                                            "dice_vs_weight_decay.png", "table3_heatmap.png"]
    for p in made:
        w, h = png_size(p)
        assert p.stat().st_size > 15_000, p  # real content, not an empty canvas
        assert 500 <= w <= 4000 and 300 <= h <= 3000, (p.name, w, h)
    # one panel per (VLSM, learner): depth has no E2E panel (no prompt depth), lr does
    w_depth, _ = png_size(tmp_path / "dice_vs_prompt_depth.png")
    w_lr, _ = png_size(tmp_path / "dice_vs_lr.png")
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
