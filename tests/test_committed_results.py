"""The committed mini-benchmark tables regenerate identically from the committed Parquet files."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "results" / "mini"


@pytest.mark.skipif(not (RUN / "trials").is_dir(), reason="no committed mini results")
def test_committed_tables_regenerate_identically(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmark", "tables", str(RUN), "--out", str(tmp_path),
                           "--format", "all", "--vs-paper", "--no-figures"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    names = [p.name for p in (RUN / "tables").iterdir() if p.suffix in (".md", ".csv", ".tex") and p.name != "report.md"]
    assert len(names) >= 12
    for name in names:
        assert (tmp_path / name).read_bytes() == (RUN / "tables" / name).read_bytes(), name
