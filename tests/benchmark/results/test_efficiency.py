"""Efficiency and cost (issue 26): per (VLSM, learner) parameters, memory, time, tuning compute and selected Dice,
GPU- vs CPU-hours said so, the Pareto front, and --price-per-hour."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmark.plan.spec import Selection
from benchmark.results import efficiency as E

REPO = Path(__file__).resolve().parents[3]


def _trials() -> pd.DataFrame:
    rows = []
    for learner, gpu, secs, params in (("coop", None, 360.0, 1000), ("maple", "NVIDIA H100", 720.0, 50_000)):
        for d, offset in (("d0", 0.0), ("d1", 0.1)):
            for i in range(3):
                rows.append({"vlsm": "clipseg", "learner": learner, "dataset": d, "variant": "default",
                             "trial_index": i, "status": "error" if i == 2 else "ok", "reseed": None,
                             "objective": 0.5 - 0.1 * i, "test_dice": 0.5 + offset + 0.01 * i,
                             "seconds": secs * (i + 1), "trainable_params": params + i,
                             "peak_gpu_mem_mb": 0.0 if gpu is None else 1000.0 * (i + 1), "gpu_name": gpu})
    # a rerun with a further seed: no part of the search's cost
    rows.append({**rows[-2], "trial_index": 9, "reseed": 1, "seconds": 1e6})
    return pd.DataFrame(rows)


def test_efficiency_columns_hours_and_devices():
    eff = E.table(_trials(), Selection(), price_per_hour=2.0).set_index("learner")
    coop, maple = eff.loc["coop"], eff.loc["maple"]
    assert coop["device"] == "CPU" and maple["device"] == "GPU: NVIDIA H100"
    assert math.isnan(coop["peak_mem_mb"])  # CPU trials report 0: nothing measured, so nothing shown
    assert maple["peak_mem_mb"] == 3000.0
    assert coop["trainable_params"] == 1000.5 and coop["trainable_params_max"] == 1001  # finished trials only
    # every search trial cost time, the failed one too: 360 + 720 + 1080 s per cell = 0.6 h
    assert coop["hours_per_cell"] == pytest.approx(0.6) and coop["hours_total"] == pytest.approx(1.2)
    assert maple["hours_per_cell"] == pytest.approx(1.2)  # the reseed row's 1e6 s left out
    assert coop["median_trial_s"] == 720.0 and coop["trials_per_cell"] == 3
    # the selected trial (lowest objective among finished: trial 1) -> mean over datasets of its test Dice
    assert coop["selected_dice"] == pytest.approx((51.0 + 61.0) / 2)
    assert coop["cost_per_cell"] == pytest.approx(1.2) and maple["cost_total"] == pytest.approx(4.8)
    assert "cost_per_cell" not in E.table(_trials(), Selection()).columns


def test_pareto_front():
    f = pd.DataFrame({"hours_per_cell": [1.0, 2.0, 2.0, 3.0, 0.5], "selected_dice": [50.0, 60.0, 55.0, 60.0, float("nan")]})
    assert E.pareto(f).tolist() == [True, True, False, False, False]


def test_report_lines_say_which_hours(tmp_path):
    lines, files = E.write(_trials(), Selection(), tmp_path, figures=True, price_per_hour=None)
    text = "\n".join(lines)
    assert "device-hours (GPU or CPU: see the device column)" in text and "Devices: CPU, GPU: NVIDIA H100" in text
    assert "| CLIPSeg | CoOp | default | 1.0 k | – | 720.0 s | 3 | 36.0 min | 56.00 |" in text
    assert {p.name for p in files} == {E.CSV, E.FIGURE}
    cpu_only = _trials()
    cpu_only["gpu_name"] = None
    assert "in CPU-hours" in "\n".join(E.report_lines(E.table(cpu_only, Selection()), None, None))


def test_cli_rejects_a_bad_price(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmark", "tables", str(tmp_path), "--out", str(tmp_path / "o"),
                           "--price-per-hour", "-3"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--price-per-hour: expected a number >= 0" in done.stderr


def test_a_learner_beyond_the_paper_carries_its_mark(tmp_path):
    """LoRA / VLSM-Adapter are marked ‡ in Tables 2 and 3; the efficiency table and Dice-vs-cost figure name
    them the same way."""
    trials = _trials()
    trials.loc[trials.learner == "maple", "learner"] = "lora"
    text = "\n".join(E.report_lines(E.table(trials, Selection()), None, None))
    assert "| CLIPSeg | LoRA ‡ |" in text and "| CLIPSeg | CoOp |" in text
