"""`tunevlseg run SPEC --smoke`: the rehearsal plan, weights fallback, isolation of its rows, the projection,
and (slow) one rehearsal end to end with the real trainable on the mini models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark import cli
from benchmark.plan.spec import spec_from_dict
from benchmark.results.run_dir import RunDir
from benchmark.sweep import smoke
from trainables.config import ConfigError

REPO = Path(__file__).resolve().parents[3]


def _spec(root: Path, **changes):
    raw = {
        "name": "rehearse",
        "axes": {"vlsm": ["clipseg", "cris"], "learner": ["coop", "maple", "e2e"],
                 "dataset": ["mini_polyp", "mini_skin"]},
        "vlsms": {"clipseg": {"weights": str(REPO / "models" / "clipseg-mini")},
                  "cris": {"weights": str(REPO / "models" / "cris-mini")}},
        "fixed": {"train": {"max_epochs": 20, "min_epochs": 10, "batch_size": 32, "effective_batch_size": 32,
                            "precision": "16-mixed"}},
        "rules": [{"when": {"learner": "maple"}, "set": {"train.batch_size": 16}},
                  {"when": {"learner": "e2e"}, "set": {"train.batch_size": 8, "train.effective_batch_size": 32,
                                                       "resources.gpu": 1}}],
        "search": {"trials": 20, "bounds": {"prompt_depth": [1, 6]}},
        "resources": {"cpu": 4, "gpu": 0.25},
        "data": {"root": str(root)},
    }
    raw.update(changes)
    return spec_from_dict(raw, base_dir=REPO)


def test_rehearsal_plan_runs_present_cells_once_at_the_spec_settings_and_skips_the_rest(tmp_path):
    (tmp_path / "mini_polyp").mkdir()  # mini_skin is missing
    reh = smoke.build_rehearsal(_spec(tmp_path), on_gpu=False, cpus=2)
    assert reh.spec.name == "rehearse.smoke" and not reh.spec.tracking.mlflow
    assert sorted(c.id for c in reh.plan.cells) == ["clipseg_coop_mini-polyp", "clipseg_e2e_mini-polyp",
                                                    "clipseg_maple_mini-polyp", "cris_coop_mini-polyp",
                                                    "cris_e2e_mini-polyp"]
    assert {c for c, _ in reh.skipped} == {c.replace("polyp", "skin") for c in (x.id for x in reh.plan.cells)}
    assert all(r.startswith(f"no data at {tmp_path / 'mini_skin'}") for _, r in reh.skipped)
    assert len(reh.full_plan.cells) == 10  # the projection prices the whole spec
    cells = {c.id: c for c in reh.plan.cells}
    for c in cells.values():
        t = c.config["train"]
        assert c.trials == 1 and c.params == ()
        assert t["max_epochs"] == smoke.SMOKE_EPOCHS and t["min_epochs"] == 0
        assert t["max_steps_per_epoch"] == smoke.SMOKE_STEPS and t["max_eval_batches"] == smoke.SMOKE_EVAL_BATCHES
        assert t["precision"] == "16-mixed"  # the spec's precision is rehearsed
        assert c.resources == {"cpu": 1.0, "gpu": 0.0}  # no GPU here
    # The batch is capped on CPU; the accumulation factor of each rule is kept.
    assert reh.batch_cap == smoke.CPU_BATCH_CAP == 2
    assert (cells["clipseg_coop_mini-polyp"].config["train"]["batch_size"],
            cells["clipseg_coop_mini-polyp"].config["train"]["effective_batch_size"]) == (2, 2)
    assert cells["clipseg_maple_mini-polyp"].config["train"]["effective_batch_size"] == 4  # 16 x 2 -> 2 x 2
    assert cells["cris_e2e_mini-polyp"].config["train"]["effective_batch_size"] == 8  # 8 x 4 -> 2 x 4
    # One fixed point of the space, its memory worst case: the deepest prompts, the widest projection.
    lc = cells["clipseg_maple_mini-polyp"].config["model"]["learner_config"]
    assert lc["prompt_depth"] == 6 and lc["intermediate_dim"] == 128 and lc["use_lora"] is False
    lr = cells["clipseg_coop_mini-polyp"].config["train"]["lr"]
    assert lr == pytest.approx((1e-5 * 5e-3) ** 0.5)


def test_on_a_gpu_the_real_batch_and_resources_are_kept(tmp_path):
    (tmp_path / "mini_polyp").mkdir()
    reh = smoke.build_rehearsal(_spec(tmp_path), on_gpu=True, cpus=2)
    cells = {c.id: c for c in reh.plan.cells}
    assert reh.batch_cap is None
    assert cells["clipseg_coop_mini-polyp"].config["train"]["batch_size"] == 32
    assert cells["clipseg_coop_mini-polyp"].resources == {"cpu": 2.0, "gpu": 0.25}  # cpu: what a node has
    assert cells["cris_e2e_mini-polyp"].resources["gpu"] == 1.0
    with pytest.raises(ConfigError, match="--smoke-batch-cap must be >= 1"):
        smoke.build_rehearsal(_spec(tmp_path), on_gpu=True, cpus=2, batch_cap=0)


def test_unloadable_weights_fall_back_to_a_random_init_of_the_same_architecture(tmp_path, monkeypatch):
    (tmp_path / "mini_polyp").mkdir()
    monkeypatch.setattr(smoke, "_hub_reachable", lambda repo: "hub not reachable (test)")
    spec = _spec(tmp_path, vlsms={"clipseg": {"weights": "CIDAS/clipseg-rd64"},
                                  "cris": {"weights": str(tmp_path / "cris-rn50.safetensors")}})
    reh = smoke.build_rehearsal(spec, on_gpu=False, cpus=2)
    got = {f.vlsm: (f.config, f.reason) for f in reh.fallbacks}
    assert got["clipseg"] == ("clipseg-rd64", "hub not reachable (test)")
    assert got["cris"][0] == "cris-rn50" and "does not exist" in got["cris"][1]
    for c in reh.plan.cells:
        assert c.config["model"]["weights"] is None
        assert c.config["model"]["vlsm_config"] == ("clipseg-rd64" if c.vlsm == "clipseg" else "cris-rn50")
    # Loadable weights are kept.
    assert smoke.build_rehearsal(_spec(tmp_path), on_gpu=False, cpus=2).fallbacks == []


def test_a_row_is_ok_only_when_its_trial_reported_ok(tmp_path):
    (tmp_path / "mini_polyp").mkdir()
    cell = smoke.build_rehearsal(_spec(tmp_path), on_gpu=False, cpus=2).plan.cells[0]
    epoch = {"train_seconds": 4.0, "train_images": 8, "optimizer_steps": 2, "val_seconds": 1.0, "val_images": 2}
    ok = smoke.measure(cell, epoch, {"status": "ok", "peak_rss_mb": 900.0, "peak_gpu_mem_mb": 0.0})
    assert (ok["status"], ok["seconds_per_step"], ok["images_per_step"], ok["peak_mem_mb"], ok["peak_mem_kind"]) \
        == ("ok", 2.0, 4.0, 900.0, "RSS")
    assert smoke.measure(cell, epoch, None)["status"] == "not run"  # interrupted: never "ok"
    failed = smoke.measure(cell, None, {"status": "error", "error": "CUDA out of memory"})
    assert failed["status"] == "error" and failed["error"] == "CUDA out of memory"
    gpu = smoke.measure(cell, epoch, {"status": "ok", "peak_gpu_mem_mb": 5000.0, "peak_rss_mb": 900.0})
    assert (gpu["peak_mem_mb"], gpu["peak_mem_kind"]) == (5000.0, "GPU")


def _rehearsal_folder(tmp_path: Path) -> Path:
    run = tmp_path / "rehearse.smoke"
    run.mkdir()
    cells = [  # kvasir card: 800 train, 100 val
        {"cell_id": "clipseg_coop_kvasir", "vlsm": "clipseg", "learner": "coop", "dataset": "kvasir",
         "status": "ok", "train_seconds_per_image": 0.5, "val_seconds_per_image": 0.2, "fixed_seconds": 30.0},
        {"cell_id": "cris_coop_kvasir", "vlsm": "cris", "learner": "coop", "dataset": "kvasir",
         "status": "error", "train_seconds_per_image": 9.0, "val_seconds_per_image": 9.0, "fixed_seconds": 1.0},
    ]
    RunDir(run).smoke_marker.write_text(json.dumps({"device": "cpu", "batch_cap": 2, "cells": cells}))
    return run


def test_measured_rates_fold_validation_in_and_skip_failed_cells(tmp_path):
    rates, fixed, label = smoke.measured_rates(_rehearsal_folder(tmp_path))
    assert rates == {("clipseg", "coop"): (pytest.approx((800 * 0.5 + 100 * 0.2) / 900), 1)}
    assert fixed == 30.0 and "batch <= 2" in label


def test_plan_estimate_from_a_rehearsal_uses_its_step_times(tmp_path, capsys):
    run = _rehearsal_folder(tmp_path)
    spec = tmp_path / "s.yaml"
    spec.write_text("axes: {vlsm: [clipseg], learner: [coop], dataset: [kvasir]}\n"
                    "fixed: {train: {max_epochs: 2}}\nsearch: {trials: 3}\nresources: {cpu: 1, gpu: 0.5}\n")
    assert cli.main(["plan", str(spec), "--estimate", "--from", str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    per_image = (800 * 0.5 + 100 * 0.2) / 900
    slot_hours = (3 * 2 * 900 * per_image + 3 * 30.0) / 3600  # images x rate + the measured fixed cost
    assert out["slot_hours"] == pytest.approx(slot_hours)
    assert out["gpu_hours"] == pytest.approx(slot_hours * 0.5)


def test_tables_refuse_rehearsal_rows(tmp_path, capsys):
    from benchmark.results import records
    from benchmark.results.run_dir import RunDir

    row = records.trial_row(spec="table3.smoke", cell={"vlsm": "clipseg", "learner": "coop", "dataset": "kvasir",
                                                         "variant": "default"},
                            cell_id="clipseg_coop_kvasir", trial_index=0, trial_id="t0", hp={},
                            result={"status": "ok", "objective": 1.0, "test_dice": 0.5}, error=None,
                            prov=records.provenance(), started_at=None, finished_at=None)
    records.write_rows([row], RunDir(tmp_path).cell_file("clipseg_coop_kvasir"))
    assert cli.main(["tables", str(tmp_path)]) == 2
    assert "rehearsal" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_rehearsal_end_to_end_on_the_mini_models(tmp_path, capsys):
    """The real trainable through Ray Tune: 16-mixed on CPU, a missing dataset skipped, a table printed,
    the folder marked and refused by `tables`, the projection reproducible with `plan --estimate --from`."""
    from trainables.data import make_synthetic

    make_synthetic("mini_polyp", tmp_path / "data" / "mini_polyp")
    spec = tmp_path / "rehearse.yaml"
    spec.write_text(
        "axes: {vlsm: [clipseg, cris], learner: [coop, e2e], dataset: [mini_polyp, mini_skin]}\n"
        f"vlsms: {{clipseg: {{weights: {REPO / 'models/clipseg-mini'}}}, cris: {{weights: {tmp_path / 'nope.safetensors'}, "
        "config: tiny}}\n"
        "fixed: {train: {batch_size: 16, effective_batch_size: 32, precision: 16-mixed}, data: {num_workers: 0}}\n"
        "search: {trials: 5, bounds: {prompt_depth: [1, 6]}}\nresources: {cpu: 1, gpu: 0}\n")
    storage = tmp_path / "runs"
    code = cli.main(["run", str(spec), "--smoke", "--data", str(tmp_path / "data"), "--storage", str(storage),
                     "--num-cpus", "2"])
    out = capsys.readouterr().out
    # The rehearsal catches what the sweep would hit later: the random-init fallback for CRIS is the tiny
    # config (4 promptable layers), and the rehearsal runs the space's deepest prompts (6).
    assert code == 1, out
    run = storage / "rehearse.smoke"
    info = json.loads(RunDir(run).smoke_marker.read_text())
    status = {c["cell_id"]: c["status"] for c in info["cells"]}
    assert status == {"clipseg_coop_mini-polyp": "ok", "clipseg_e2e_mini-polyp": "ok",
                      "cris_coop_mini-polyp": "error", "cris_e2e_mini-polyp": "ok"}
    assert "prompt_depth: 6 exceeds the 4 layers" in out
    assert {s["cell_id"] for s in info["skipped"]} == {"clipseg_coop_mini-skin", "clipseg_e2e_mini-skin",
                                                        "cris_coop_mini-skin", "cris_e2e_mini-skin"}
    assert [f["vlsm"] for f in info["random_init"]] == ["cris"] and "RANDOM INIT of tiny" in out
    for c in (c for c in info["cells"] if c["status"] == "ok"):
        assert c["seconds_per_step"] > 0 and c["images_per_step"] == 4 and c["peak_mem_mb"] > 0  # 2 x 2
    assert "skipped  (no data at" in out and "estimated cost, 8 cells" in out
    assert RunDir(run).smoke_table.read_text().strip() in out
    assert cli.main(["tables", str(run)]) == 2  # never tabulated as results
    assert not (storage / "rehearse").exists()  # the real run's folder is untouched
