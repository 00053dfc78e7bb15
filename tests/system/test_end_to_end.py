"""End to end through the real path: mini data -> spec -> Ray Tune (real trainable, real mini VLSMs)
-> Parquet + MLflow -> tables and predict. A reduced `experiments/mini.yaml` (2 cells x 2 trials, 2 epochs),
so `make benchmark`'s main path can never silently break; it takes well under a minute on 2 cores.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from benchmark.plan.spec import load_spec
from benchmark.results.run_dir import RunDir
from benchmark.sweep.coordinator import run_sweep
from trainables.model import find_artifact

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def mini_data(tmp_path_factory):
    from trainables.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("data")
    make_synthetic("mini_polyp", root / "mini_polyp", seed=0, counts=(16, 8, 8))
    return root


def _reduced_mini_spec(tmp_path: Path, data_root: Path) -> Path:
    raw = yaml.safe_load((REPO / "experiments" / "mini.yaml").read_text())
    raw["axes"] = {"pairs": [["clipseg", "vpt"], ["cris", "coop"]], "dataset": ["mini_polyp"], "variant": ["default"]}
    raw["fixed"]["train"].update(max_epochs=2, min_epochs=1)
    raw["search"]["trials"] = 2
    raw["data"] = {"root": str(data_root)}
    raw["vlsms"] = {k: {"weights": str(REPO / v["weights"])} for k, v in raw["vlsms"].items()}
    raw["rules"] = []
    path = tmp_path / "mini-smoke.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_reduced_mini_benchmark_end_to_end(tmp_path, mini_data):
    spec = load_spec(_reduced_mini_spec(tmp_path, mini_data))
    result = run_sweep(spec, tmp_path / "runs", num_cpus=2)
    assert (result.planned, result.done, result.failed) == (4, 4, 0)

    run_dir = tmp_path / "runs" / spec.name
    df = RunDir(run_dir).frame()
    assert len(df) == 4 and df["trial_id"].is_unique
    assert set(df["status"]) == {"ok"}
    assert set(df["cell_id"]) == {"clipseg_vpt_mini-polyp", "cris_coop_mini-polyp"}
    assert df["test_dice"].between(0, 1).all() and df["test_dice_orig"].between(0, 1).all()
    assert (df["epochs_run"] == 2).all()
    assert df["hp_prompt_depth"].between(1, 6).all()  # the spec's bounds for the 6-layer mini models
    # VPT at depth J trains J*4*128 prompt values + the 1,602-value upsampler (128-wide mini ViT).
    vpt = df[df.learner == "vpt"]
    assert (vpt["trainable_params"] == vpt["hp_prompt_depth"] * 4 * 128 + 32 * 25 + 1 + 1).all()

    with sqlite3.connect(run_dir / "mlflow.db") as db:
        statuses = [r[0] for r in db.execute("select status from runs")]
    assert statuses and "RUNNING" not in statuses

    # Tables from the Parquet alone, in a subprocess as a user would run them.
    out = tmp_path / "tables"
    proc = subprocess.run([sys.executable, "-m", "benchmark", "tables", str(run_dir), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    table3 = (out / "table3.md").read_text()
    assert "VPT" in table3 and "CoOp" in table3

    # Every trial keeps its tuned prompt in the run's storage, also when its worker was reused
    # (reuse_actors): the artifact travels in the trial's last checkpoint.
    trial_dirs = {tid: next((run_dir / "tune").glob(f"*_{tid}")) for tid in df["trial_id"]}
    metas = {tid: json.loads((find_artifact(d) / "tunevlseg.json").read_text()) for tid, d in trial_dirs.items()}
    for tid, meta in metas.items():
        row = df[df.trial_id == tid].iloc[0]
        assert (meta["model"]["vlsm"], meta["model"]["learner"]) == (row.vlsm, row.learner)
        assert meta["trainable_params"] == row.trainable_params
    assert len(list((run_dir / "mlartifacts").rglob("artifact/tunevlseg.json"))) == 4  # MLflow has each one too
    # ... and the picture of what it segments (test images, ground truth, prediction), at the run's top level.
    assert len(list((run_dir / "mlartifacts").glob("*/artifacts/preview.png"))) == 4

    # A cell's selected tuned prompt segments new images, given the run and the cell.
    images = mini_data / "mini_polyp" / "images"
    masks_out = tmp_path / "pred"
    selected = RunDir(run_dir).selected_trial_dir("cris_coop_mini-polyp")
    assert selected == trial_dirs[pd.read_parquet(run_dir / "selected.parquet").set_index("cell_id")
                                  .loc["cris_coop_mini-polyp", "trial_id"]]
    proc = subprocess.run([sys.executable, "-m", "benchmark", "predict", "--artifact", str(run_dir),
                           "--cell", "cris_coop_mini_polyp", "--images", str(images), "--out", str(masks_out)],
                          capture_output=True, text=True, cwd=REPO)  # the artifact's own prompt; the spec's spelling
    assert proc.returncode == 0, proc.stderr
    assert len(list(masks_out.glob("*.png"))) == len(list(images.glob("*.png")))
    assert all(meta["data"] == {"dataset": "mini_polyp", "prompt": "polyp."} for meta in metas.values())
