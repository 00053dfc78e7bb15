"""The committed mini-benchmark tables regenerate identically from the committed Parquet files."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNS = [REPO / "results" / "mini", REPO / "results" / "mini_seeds"]  # mini_seeds: reruns over seeds (issue 19)


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_committed_tables_regenerate_identically(tmp_path, run):
    if not (run / "trials").is_dir():
        pytest.skip(f"no committed results in {run}")
    proc = subprocess.run([sys.executable, "-m", "benchmark", "tables", str(run), "--out", str(tmp_path),
                           "--format", "all", "--vs-paper", "--no-figures"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    names = [p.name for p in (run / "tables").iterdir() if p.suffix in (".md", ".csv", ".tex") and p.name != "report.md"]
    assert len(names) >= 12
    for name in names:
        assert (tmp_path / name).read_bytes() == (run / "tables" / name).read_bytes(), name
