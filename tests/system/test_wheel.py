"""The wheel works anywhere: built from this checkout, installed into a fresh venv, run from a folder that
is not the checkout. The venv sees the already-installed dependencies through a .pth line (no network);
the editable install of this checkout there is inert (.pth files in a path added by a .pth are not run)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(cmd, cwd, timeout=600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TUNEVLSEG_CARDS", "VIRTUAL_ENV")}
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.mark.slow
def test_the_wheel_runs_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, REPO], REPO)
    (wheel,) = dist.glob("tunevlseg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = "trainables/_shipped/"
    for rel in ("datasets/kvasir.yaml", "datasets/mini_polyp.yaml", "datasets/splits/kvasir/test.jsonl.gz",
                "experiments/table3.yaml", "experiments/mini.yaml", "models/clipseg-mini/model.safetensors",
                "models/cris-mini/cris-mini.safetensors", "results/paper/table3.csv"):
        assert shipped + rel in names, rel
    # The data folders stay data: no top-level `datasets` and no package inside the shipped copies.
    assert not any(n.split("/")[0] in ("datasets", "experiments", "models", "results") for n in names)
    assert not any(n.startswith(shipped) and n.endswith((".py", ".pyc")) for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip())
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index", wheel], tmp_path)
    cli = venv / "bin" / "tunevlseg"
    work = tmp_path / "elsewhere"
    work.mkdir()

    where = _run([py, "-c", "import trainables, benchmark; print(trainables.__file__, benchmark.__file__)"], work)
    assert str(REPO) not in where and str(site) in where
    assert _run([cli, "--version"], work).strip() == "tunevlseg 0.1.0"  # no checkout: no commit
    assert "mini_polyp" in _run([cli, "data", "list"], work)
    assert "table3: 100 cells, 1620 trials" in _run([cli, "plan", "table3"], work)
    weights = _run([py, "-c", "from benchmark.plan.spec import load_spec; "
                    "print(load_spec('mini').vlsms['clipseg'].weights)"], work).strip()
    assert weights == str(site / "trainables" / "_shipped" / "models" / "clipseg-mini") and Path(weights).is_dir()
    _run([cli, "data", "make-synthetic", "--dst", "data", "--name", "mini_polyp"], work)
    assert (work / "data" / "mini_polyp").is_dir()
    assert "mini: 45 cells" in _run([cli, "plan", "mini", "--data", "data"], work)

    out = _run([cli, "run", "smoke", "--storage", work / "runs", "--num-cpus", "2"], work)
    assert "8/8 trials recorded, 0 failed" in out
    rows = _run([py, "-c", "from benchmark.results.run_dir import RunDir; df = RunDir('runs/smoke').frame(); "
                 "print(len(df), set(df.git_sha), df.versions.iloc[0])"], work)
    assert rows.startswith("8 {'unknown'}") and '"tunevlseg": "0.1.0"' in rows
    out = _run([cli, "tables", "runs/smoke", "--out", "runs/smoke/tables", "--vs-paper", "--format", "csv"], work)
    assert (work / "runs" / "smoke" / "tables" / "table3_vs_paper.csv").is_file()
    assert "logged to the sweep's MLflow run" in out
