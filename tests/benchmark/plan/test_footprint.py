"""`plan --estimate`'s disk term: the run directory's size from the artifacts a finished trial keeps."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmark import cli
from benchmark.plan.footprint import run_dir_gb, weights_mb

REPO = Path(__file__).resolve().parents[3]


def test_e2e_artifact_size_is_the_vlsms_fp32_weights_counted_from_the_header():
    from safetensors import safe_open

    path = REPO / "models" / "clipseg-mini" / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert weights_mb(str(path.parent)) == params * 4 / 1e6
    assert weights_mb("CIDAS/clipseg-rd64") > 500 and weights_mb("someone/unknown") is None


def test_plan_estimate_prints_the_run_directory_size(capsys):
    assert cli.main(["plan", "mini", "--estimate", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    from benchmark.plan.matrix import build_plan
    from benchmark.plan.spec import load_spec

    gb, notes = run_dir_gb(build_plan(load_spec("mini")).cells, mlflow_copy=True)
    assert out["run_dir_gb"] == gb and 0.05 < gb < 2  # 84 trials: KB-sized prompts, 6 E2E copies of ~20 MB
    assert any(n.startswith("run directory after the sweep: about") for n in out["notes"])
