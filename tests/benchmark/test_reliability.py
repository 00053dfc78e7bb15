"""What users do to a sweep and its run directory (issue 16): an edited spec, bad YAML, a full disk, a dead
MLflow. Fast unit-level checks; the end-to-end fault-injection runs are in tests/system/test_faults.py (slow),
the lock's in tests/benchmark/sweep/test_lock.py, storage's in test_storage.py, predict's in
tests/benchmark/commands/test_predict.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from helpers import spec_file as _spec_file

from benchmark import cli

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "experiments" / "smoke.yaml"


# ---- the plan fingerprint covers what shapes a trial -------------------------------------------------------

@pytest.mark.parametrize("changes, named", [
    ({"fixed__train": {"max_epochs": 5}}, "config.train.max_epochs: 3 -> 5"),
    ({"search__bounds": {"prompt_depth": [1, 6]}}, "params.prompt_depth.high: 11 -> 6"),
    ({"data": {"roots": {"kvasir": "/var"}}}, 'cells.<2 cells>.config.data.root: "/tmp" -> "/var"'),
    ({"rules": [{"when": {"learner": "coop"}, "set": {"train.batch_size": 2}}]},
     "cells.clipseg_coop_kvasir.config.train.batch_size"),
])
def test_a_changed_setting_is_refused_naming_old_and_new(tmp_path, changes, named):
    from benchmark.plan.matrix import build_plan
    from benchmark.plan.spec import load_spec
    from benchmark.sweep.run_state import plan_state
    from trainables.config import ConfigError

    run_dir = tmp_path / "smoke"
    plan_state(run_dir, build_plan(load_spec(SMOKE)), force=False)
    (run_dir / "tune").mkdir()
    with pytest.raises(ConfigError) as e:
        plan_state(run_dir, build_plan(load_spec(_spec_file(tmp_path, **changes))), force=False)
    assert named in str(e.value) and "\n" not in str(e.value), str(e.value)
    # --force is the way through
    plan_state(run_dir, build_plan(load_spec(_spec_file(tmp_path, **changes))), force=True)


def test_either_spelling_of_a_name_is_the_same_plan(tmp_path):
    """Names are canonicalised before the fingerprint is taken (issue 17): a run started with
    `shared-attention`/`mini-polyp` resumes with `shared_attention`/`mini_polyp` and vice versa."""
    from benchmark.plan.matrix import build_plan
    from benchmark.plan.spec import load_spec
    from benchmark.sweep.run_state import plan_state

    def spec(learner: str, dataset: str):
        return load_spec(_spec_file(tmp_path, axes={"vlsm": ["clipseg"], "learner": ["coop", learner],
                                                    "dataset": [dataset]}, data={"roots": {dataset: "/tmp"}}))

    dashed, snake = build_plan(spec("shared-attention", "mini-polyp")), build_plan(spec("shared_attention", "mini_polyp"))
    assert dashed.fingerprint() == snake.fingerprint()
    assert "clipseg_shared-attention_mini-polyp" in dashed.fingerprint()["cells"]
    run_dir = tmp_path / "run"
    sweep_id = plan_state(run_dir, dashed, force=False)["sweep_id"]
    (run_dir / "tune").mkdir()
    assert plan_state(run_dir, snake, force=False)["sweep_id"] == sweep_id  # no "changed" refusal


@pytest.mark.parametrize("spec_name", ["table3", "mini", "smoke"])
def test_sync_gives_a_cell_the_params_the_live_mirror_gave_it(spec_name):
    """`mlflow sync` rebuilds a parent run's params from plan.json's fingerprint; they must be the strings
    the live mirror logged from the Cell."""
    from benchmark.mlflow_mirror.tags import cell_params, cell_params_from_plan
    from benchmark.plan.matrix import build_plan
    from benchmark.plan.spec import load_spec

    plan = build_plan(load_spec(REPO / "experiments" / f"{spec_name}.yaml"))
    stored = json.loads(json.dumps(plan.fingerprint()))["cells"]  # as plan.json holds it
    for cell in plan.cells:
        assert cell_params_from_plan(stored[cell.id]) == cell_params(cell), cell.id


# ---- one-line errors --------------------------------------------------------------------------------------

def test_yaml_errors_give_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\naxes:\n  learner: [coop, maple\n  vlsm: [clipseg]\n")
    assert cli.main(["run", str(bad), "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "line 4" in err and str(bad) in err


@pytest.mark.parametrize("changes, expected", [
    ({"axes__learner": ["coop", "mapel"]}, "smoke.yaml: axes.learner: unknown learner 'mapel'"),
    ({"fixed__train": {"max_epoch": 3}}, "smoke.yaml: fixed/rules, cell clipseg_coop_kvasir: "),
])
def test_spec_errors_name_the_file_and_the_field(tmp_path, capsys, changes, expected, monkeypatch):
    path = _spec_file(tmp_path, **changes)
    if "fixed__train" in changes:  # the real trainable's config loader checks fixed.train
        spec = yaml.safe_load(path.read_text())
        spec["trainable"] = "trainables.trial.tune_trainable"
        spec["fixed"].pop("fake")
        path.write_text(yaml.safe_dump(spec))
    assert cli.main(["run", str(path), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expected in err, err
    if "fixed__train" in changes:
        assert "max_epoch" in err


def test_a_disk_filling_up_mid_run_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    import benchmark.commands.run as run_cmd

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/smoke/trials/x.parquet.tmp")

    monkeypatch.setattr(run_cmd, "run", full)
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["benchmark.commands.run"])
    assert cli.main(["run", str(SMOKE)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "No space left on device (/runs/smoke/trials/x.parquet.tmp)" in err


# ---- MLflow is a mirror ------------------------------------------------------------------------------------

def test_a_dying_mlflow_server_turns_the_mirror_off_with_one_warning(monkeypatch, caplog):
    """Mid-sweep: the first failing call turns the mirror off; later callbacks return at once."""
    import logging
    from types import SimpleNamespace

    from benchmark.mlflow_mirror.tracking import MLflowCallback, MLflowMirror

    for k in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(k, raising=False)
    mirror = MLflowMirror("http://127.0.0.1:9", "smoke", "sweep1", {"c": {"vlsm": "clipseg"}})
    mirror.sync_hint = "tunevlseg mlflow sync /runs/smoke"
    calls = []

    class Dead:
        def __getattr__(self, name):
            def fail(*a, **k):
                calls.append(name)
                raise ConnectionError("connection refused")
            return fail

    _ = mirror.client  # sets the short HTTP timeouts before the first request
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
    mirror._client = Dead()
    callback = MLflowCallback(mirror)
    trial = SimpleNamespace(trial_id="t1", config={"cell_id": "c", "trial_index": 0}, last_result={})
    with caplog.at_level(logging.WARNING, logger="tunevlseg.tracking"):
        t0 = time.time()
        for i in range(50):
            callback.on_trial_result(i, [trial], trial, {"epoch": i, "val_loss": 0.5})
        callback.on_trial_complete(50, [trial], trial)
        mirror.finalize({"t1"}, {})
    assert time.time() - t0 < 1
    assert len(calls) == 1  # one failed request, then nothing
    warnings = [r for r in caplog.records if "MLflow mirror off" in r.getMessage()]
    assert len(warnings) == 1 and "tunevlseg mlflow sync /runs/smoke" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
