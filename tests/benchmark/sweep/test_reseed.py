"""Variance over seeds (spec `select: {reseed: K}`): after its search, each cell's selected configuration
reruns with K further seeds; the reruns are their own rows and MLflow runs, never told to Optuna, never the
selected trial, and a resumed sweep keeps exactly K of them per cell."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from benchmark.plan.matrix import build_plan
from benchmark.plan.spec import Selection, load_spec, spec_from_dict
from benchmark.results.run_dir import RunDir, select
from benchmark.sweep import reseed
from trainables.config import ConfigError

REPO = Path(__file__).resolve().parents[3]
SMOKE = REPO / "experiments" / "smoke.yaml"
K = 2


def _smoke(**select_extra) -> dict:
    data = yaml.safe_load(SMOKE.read_text())
    data["select"] = {**data.get("select", {}), **select_extra}
    return data


def _spec_file(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "experiments" / "smoke.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


# ---- plan and spec ------------------------------------------------------------------------------------

def test_reseed_is_planned_and_fingerprinted_only_when_set():
    off = build_plan(spec_from_dict(_smoke(), base_dir=REPO))
    on = build_plan(spec_from_dict(_smoke(reseed=K), base_dir=REPO))
    assert off.total_trials == 8 and on.total_trials == 8 + 2 * K
    assert all(c.reseeds == K for c in on.cells)
    assert "reseeds" not in str(off.fingerprint())  # runs from before the setting keep their fingerprint
    assert off.fingerprint() != on.fingerprint()


@pytest.mark.parametrize("bad", [-1, 1.5, "two", True])
def test_bad_reseed_is_one_clear_error(bad):
    with pytest.raises(ConfigError, match=r"select[. ]reseed: .*integer"):
        spec_from_dict(_smoke(reseed=bad), base_dir=REPO)


def test_default_seed_is_the_trainables():
    from trainables.trial import TrainConfig

    assert reseed.DEFAULT_SEED == TrainConfig().seed


def test_selection_never_picks_a_reseed_row():
    rule = Selection()
    rows = [{"trial_index": 0, "status": "ok", "objective": 0.5, "reseed": None},
            {"trial_index": 1, "status": "ok", "objective": 0.4},
            {"trial_index": 4, "status": "ok", "objective": 0.1, "reseed": 1, "reseed_of": 1}]
    assert select(rows, rule)["trial_index"] == 1


# ---- the searcher, driven by hand (no Ray workers) --------------------------------------------------

def _searcher(data: dict):
    from benchmark.sweep.searcher import MultiCellSearcher

    spec = spec_from_dict(data, base_dir=REPO)
    plan = build_plan(spec)
    return plan, MultiCellSearcher(plan.cells, n_startup_trials=2, select=spec.select)


def _finish(searcher, tid: str, cfg: dict, objective: float) -> None:
    searcher.on_trial_complete(tid, {"objective": objective, "status": "ok", "test_dice": 1 - objective})


def test_searcher_reruns_the_selected_config_with_further_seeds_after_the_search():
    from ray.tune.search import Searcher

    plan, s = _searcher(_smoke(reseed=K))
    cells = [c.id for c in plan.cells]
    configs: dict[str, dict] = {}
    n = 0
    # Issue every search trial; nothing is rerun while a cell's search is still open.
    while True:
        tid = f"t{n}"
        cfg = s.suggest(tid)
        if cfg is None or cfg == Searcher.FINISHED:
            break
        assert "reseed" not in cfg
        configs[tid] = cfg
        n += 1
    assert cfg is None, "with trials in flight and reseeds to come, the searcher must wait, not finish"
    assert len(configs) == 8
    # Finish the search trials; trial #2 of each cell has the best (lowest) objective.
    for tid, cfg in configs.items():
        _finish(s, tid, cfg, 0.1 if cfg["trial_index"] == 2 else 0.5 + 0.01 * cfg["trial_index"])
    reseeds = []
    while (cfg := s.suggest(f"r{len(reseeds)}")) not in (None, Searcher.FINISHED):
        reseeds.append(cfg)
    assert cfg == Searcher.FINISHED or len(reseeds) == 2 * K
    assert len(reseeds) == 2 * K
    for cid in cells:
        mine = [c for c in reseeds if c["cell_id"] == cid]
        chosen = next(c for c in configs.values() if c["cell_id"] == cid and c["trial_index"] == 2)
        assert [c["reseed"]["k"] for c in mine] == list(range(1, K + 1))
        assert {c["reseed"]["of"] for c in mine} == {2}
        assert [c["trial_index"] for c in mine] == [4, 5]  # after the search's 0..3
        for c in mine:
            assert c["hp"] == chosen["hp"]
            assert c["trial"]["train"]["seed"] == reseed.DEFAULT_SEED + c["reseed"]["k"] == c["reseed"]["seed"]
            # the same configuration apart from the seed
            other = {**c["trial"], "train": {k: v for k, v in c["trial"]["train"].items() if k != "seed"}}
            assert other == chosen["trial"]
    # The reseed trials finish: Optuna hears nothing of them.
    for i, cfg in enumerate(reseeds):
        s.on_trial_result(f"r{i}", {"objective": 0.3, "training_iteration": 1})
        _finish(s, f"r{i}", cfg, 0.3)
    assert s.suggest("late") == Searcher.FINISHED
    for cid in cells:
        study = s.study(cid)
        assert len(study.trials) == 4
        assert {t.state.name for t in study.trials} == {"COMPLETE"}
    # Pickled and restored like Tune's snapshot: nothing is issued twice.
    import pickle

    s2 = pickle.loads(pickle.dumps(s))
    assert s2.suggest("again") == Searcher.FINISHED


def test_no_reseeds_for_a_cell_without_a_selectable_trial():
    from ray.tune.search import Searcher

    plan, s = _searcher(_smoke(reseed=K))
    configs = {}
    while (cfg := s.suggest(f"t{len(configs)}")) not in (None, Searcher.FINISHED):
        configs[f"t{len(configs)}"] = cfg
    coop = plan.cells[0].id
    for tid, cfg in configs.items():
        if cfg["cell_id"] == coop:
            s.on_trial_complete(tid, {"objective": float("inf"), "status": "diverged"})
        else:
            _finish(s, tid, cfg, 0.5)
    extra = []
    while (cfg := s.suggest(f"r{len(extra)}")) not in (None, Searcher.FINISHED):
        extra.append(cfg)
    assert cfg == Searcher.FINISHED
    assert {c["cell_id"] for c in extra} == {plan.cells[1].id} and len(extra) == K
    rows = {f"x{i}": {"status": "diverged", "objective": float("inf"), "trial_index": i} for i in range(4)}
    assert reseed.expected(plan.cells[0], rows, Selection()) == 4  # the sweep is complete without them


# ---- end to end with Ray and the fake trainable ------------------------------------------------------

def _check_reseeded_sweep(run_dir: Path, k: int = K) -> None:
    from mlflow.tracking import MlflowClient

    from benchmark.sweep.searcher import load_studies

    df = RunDir(run_dir).frame()
    assert len(df) == 8 + 2 * k
    assert df["trial_id"].is_unique and not df.duplicated(["cell_id", "trial_index"]).any()
    rs = df[df["reseed"].notna()]
    for cid, cell in df.groupby("cell_id"):
        search = cell[cell["reseed"].isna()]
        mine = cell[cell["reseed"].notna()]
        assert sorted(search["trial_index"]) == [0, 1, 2, 3]
        assert sorted(mine["reseed"]) == list(range(1, k + 1)), cid
        best = select(search.to_dict("records"), Selection())
        assert set(mine["reseed_of"]) == {best["trial_index"]}
        assert (mine["hp_lr"] == best["hp_lr"]).all() and (mine["hp_prompt_depth"] == best["hp_prompt_depth"]).all()
        assert sorted(mine["seed"]) == [reseed.DEFAULT_SEED + i for i in range(1, k + 1)]
        assert search["seed"].isna().all()  # the smoke spec sets no train.seed: the trainable's default ran
        assert (mine["status"] == "ok").all()
        # seed_noise makes the reruns differ from each other
        assert mine["test_dice"].nunique() == k
    assert len(rs) == 2 * k
    for cid, study in load_studies(str(run_dir / "tune")).items():
        assert len(study.trials) == 4, cid  # Optuna saw the search only
    # ... and so did the studies in Optuna's own storage (optuna.db, issue 17): the search's trials, each
    # linked to a search row, none of them a rerun
    from benchmark.sweep.studies import load_studies as stored_studies

    stored = stored_studies(run_dir)
    assert set(stored) == set(df["cell_id"])
    for cid, study in stored.items():
        assert len(study.trials) == 4 and {t.state.name for t in study.trials} == {"COMPLETE"}, cid
        linked = {t.user_attrs.get("ray_trial_id") for t in study.trials}
        cell = df[df["cell_id"] == cid]
        assert linked == set(cell[cell["reseed"].isna()]["trial_id"]), cid
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("tunevlseg.role") == "trial"]
    assert len(runs) == 8 + 2 * k and {r.info.status for r in runs} == {"FINISHED"}
    tagged = [r for r in runs if "reseed" in r.data.tags]
    assert sorted(int(r.data.tags["reseed"]) for r in tagged) == sorted(list(range(1, k + 1)) * 2)
    of = {r["trial_id"]: str(int(r["reseed_of"])) for r in rs.to_dict("records")}
    assert {r.data.tags["trial_id"]: r.data.tags["reseed_of"] for r in tagged} == of
    assert {r.data.params["train.seed"] for r in tagged} == {str(reseed.DEFAULT_SEED + i) for i in range(1, k + 1)}
    # selected.parquet names a search trial
    import pyarrow.parquet as pq

    selected = pq.read_table(RunDir(run_dir).selected_file).to_pylist()
    assert len(selected) == 2 and all(r["reseed"] is None for r in selected)


@pytest.mark.ray
def test_sweep_runs_k_reseeds_per_cell_and_reruns_as_noop(tmp_path, local_ray):
    from benchmark.sweep.coordinator import run_sweep

    data = _smoke(reseed=K)
    data["fixed"]["fake"]["seed_noise"] = 0.2
    spec = load_spec(_spec_file(tmp_path, data))
    result = run_sweep(spec, tmp_path / "runs")
    assert (result.planned, result.done, result.failed, result.exit_code) == (12, 12, 0, 0)
    _check_reseeded_sweep(tmp_path / "runs" / "smoke")
    again = run_sweep(spec, tmp_path / "runs")
    assert again.noop and again.done == 12
    # MLflow lost, then backfilled from Parquet (`tunevlseg mlflow sync`): the reruns keep their tags, also
    # for a trial whose params.json is gone, and every cell's parent run counts its reruns as done
    import shutil

    from benchmark.mlflow_mirror.backfill import sync

    # (a copy without the MLflow store: this process keeps the original sqlite store open)
    run_dir = tmp_path / "copy" / "smoke"
    shutil.copytree(tmp_path / "runs" / "smoke", run_dir, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    rerun = RunDir(run_dir).frame().query("reseed == 1").iloc[0]
    for params in (run_dir / "tune").glob(f"*_{rerun['trial_id']}/params.json"):
        params.unlink()
    assert sync(run_dir)["created"] == 12
    _check_reseeded_sweep(run_dir)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    parents = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("tunevlseg.role") == "cell"]
    assert len(parents) == 2 and {r.info.status for r in parents} == {"FINISHED"}
    assert {r.data.tags["trials_done"] for r in parents} == {str(4 + K)}


def test_a_rehearsal_schedules_no_reruns(tmp_path):
    """`run --smoke` runs one trial per cell: a spec with select.reseed must not add its reruns there (the
    projection still prices them from the full plan)."""
    from benchmark.sweep.smoke import build_rehearsal

    data = _smoke(reseed=K)
    (tmp_path / "kvasir").mkdir()  # a dataset folder that exists: every cell is rehearsed
    data["data"] = {"root": str(tmp_path)}
    reh = build_rehearsal(spec_from_dict(data, base_dir=REPO), on_gpu=False, cpus=2)
    assert reh.plan.cells and all(c.reseeds == 0 for c in reh.plan.cells)
    assert reh.plan.total_trials == len(reh.plan.cells) and reh.spec.select.reseed == 0
    assert reh.full_plan.total_trials == 8 + 2 * K


@pytest.mark.slow
def test_sigkill_during_reseeds_then_rerun_keeps_exactly_k_per_cell(tmp_path):
    data = _smoke(reseed=K)
    data["fixed"]["train"] = {"max_epochs": 4}
    data["fixed"]["fake"] = {"epoch_seconds": 0.6, "seed_noise": 0.2}
    path = _spec_file(tmp_path, data)
    storage = tmp_path / "runs"
    cmd = [sys.executable, "-m", "benchmark", "run", str(path), "--storage", str(storage), "--num-cpus", "2"]
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    run_dir = storage / "smoke"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # kill once the first reseed rows are in, with others running
            if RunDir(run_dir).trials_dir.is_dir():
                df = RunDir(run_dir).frame()
                if df["reseed"].notna().sum() >= 1:
                    break
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)
        at_kill = RunDir(run_dir).frame()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert 1 <= at_kill["reseed"].notna().sum() < 2 * K, at_kill[["cell_id", "trial_index", "reseed"]]

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                          start_new_session=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resuming the sweep" in done.stdout
    _check_reseeded_sweep(run_dir)


def test_mini_seeds_is_minis_clipseg_table3_cells_with_reseeds():
    """experiments/mini_seeds.yaml: the mini benchmark's CLIPSeg Table 3 cells with the same trial configs, plus
    reruns."""
    mini = build_plan(load_spec(REPO / "experiments" / "mini.yaml"))
    seeds = build_plan(load_spec(REPO / "experiments" / "mini_seeds.yaml"))
    default = {c.id: c for c in mini.cells if c.variant == "default" and c.vlsm == "clipseg"}
    assert {c.id for c in seeds.cells} == set(default)
    for c in seeds.cells:
        assert c.reseeds == 2 and c.trials == default[c.id].trials and c.config == default[c.id].config
        assert c.params == default[c.id].params
    assert all(c.reseeds == 0 for c in mini.cells)
