"""What a sweep prints while it runs: an estimated time left on each progress line, and no warning from Ray
on a plain local start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmark.sweep.progress import disk_usage, eta_seconds, eta_text, human_bytes
from benchmark.sweep.records_callback import RecordsCallback

REPO = Path(__file__).resolve().parents[3]


def test_eta_is_the_mean_trial_time_over_the_trials_left_per_slot():
    assert eta_seconds([], 5, 2) is None and eta_text([], 5, 2) == ""
    assert eta_seconds([10.0, 20.0], 3, 2) == pytest.approx(22.5)  # 15 s x 3 trials / 2 slots
    assert eta_seconds([10.0, None, float("nan")], 1, 4) == pytest.approx(10.0)  # one trial left: one slot
    assert eta_text([10.0, 20.0], 3, 2) == "~0:00:22 left (estimate)"
    assert eta_text([3600.0], 2, 1) == "~2:00:00 left (estimate)"
    assert eta_text([10.0], 0, 1) == ""  # the last trial's line: nothing left to estimate


def test_disk_usage_counts_the_files_under_a_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"0" * 1500)
    (tmp_path / "y.bin").write_bytes(b"0" * 2_500_000)
    assert disk_usage(tmp_path) == 2_501_500
    assert [human_bytes(n) for n in (999, 1500, 2_501_500, 3.2e9)] == ["999 B", "1.5 KB", "2.5 MB", "3.2 GB"]


def _trial(tid: str, index: int, seconds: float, status: str = "TERMINATED"):
    config = {"cell_id": "c", "trial_index": index, "hp": {}, "trial": {}}
    result = {"objective": 1.0 / (index + 1), "status": "ok", "error": "", "time_total_s": seconds}
    return SimpleNamespace(trial_id=tid, config=config, last_result=result, status=status)


def test_progress_lines_say_the_estimated_time_left(tmp_path, capsys):
    cells = {"c": {"keys": {"vlsm": "clipseg", "learner": "coop", "dataset": "d", "variant": "default"},
                   "planned": 5}}
    cb = RecordsCallback(str(tmp_path), "spec", cells, {"by": "objective", "mode": "min", "report": "test_dice"})
    cb.setup()
    a, b, c = _trial("a", 0, 30.0), _trial("b", 1, 50.0, "RUNNING"), _trial("c", 2, 0.0, "RUNNING")
    cb._record([a, b, c], a, error=None)  # 3 ran at once; 4 left at 30 s each on 3 slots
    cb._record([a, b, c], b, error=None)  # mean 40 s, 3 left on 3 slots
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[")]
    assert lines[0].endswith("trials 1/5, cells 0/1 done, ~0:00:40 left (estimate)"), lines[0]
    assert lines[1].endswith("trials 2/5, cells 0/1 done, ~0:00:40 left (estimate)"), lines[1]


@pytest.mark.ray
def test_a_sweep_on_a_local_ray_prints_no_token_auth_warning(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-m", "benchmark", "run", "smoke", "--storage", str(tmp_path),
                           "--num-cpus", "2"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "8/8 trials recorded" in proc.stdout
    size = human_bytes(disk_usage(tmp_path / "smoke"))  # the summary says how much disk the run directory takes
    assert f"trials recorded, 0 failed -> {tmp_path / 'smoke'} (" in proc.stdout and "on disk)" in proc.stdout
    assert size.split()[1] in proc.stdout.split("trials recorded")[-1]
    assert "left (estimate)" in proc.stdout  # the progress lines, through the real Tune callbacks
    assert "Token authentication" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
