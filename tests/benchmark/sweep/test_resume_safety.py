"""Resumes that must never lose a recorded result or loop (issue 25, items 1-2): a torn Tune snapshot, a
restore Tune gives up on, a selection rule with a typo."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from benchmark import cli
from benchmark.plan.spec import load_spec
from benchmark.results.run_dir import RunDir
from trainables.config import ConfigError

REPO = Path(__file__).resolve().parents[3]
SMOKE = REPO / "experiments" / "smoke.yaml"


def _spec_file(tmp_path: Path, **top) -> Path:
    data = yaml.safe_load(SMOKE.read_text())
    data["fixed"] = {"train": {"max_epochs": 2}, "fake": {"epoch_seconds": 0.01, "fail_trials": [1],
                                                           "fail_once": True}}
    data.update(top)
    path = tmp_path / "experiments" / "smoke.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def _state(run_dir: Path) -> dict:
    """What a restart must not change: the rows, the MLflow trial runs, the stored Optuna trials."""
    from mlflow.tracking import MlflowClient

    from benchmark.sweep.studies import load_studies

    df = RunDir(run_dir).frame()
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id], "tags.`tunevlseg.role` = 'trial'", max_results=1000)
    studies = {cid: len(s.trials) for cid, s in load_studies(run_dir).items()}
    return {"rows": sorted(df["trial_id"]), "runs": sorted(r.info.run_id for r in runs), "studies": studies}


def _digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != "driver.lock"}


@pytest.fixture(scope="module")
def failed_once(tmp_path_factory, local_ray):
    """A smoke sweep whose trial 1 of each cell failed once: a rerun resumes it (8 rows, 2 of them errors)."""
    tmp = tmp_path_factory.mktemp("failed_once")
    spec = _spec_file(tmp)
    assert cli.main(["run", str(spec), "--storage", str(tmp / "runs")]) == 1
    return spec, tmp / "runs" / "smoke"


def _copy(src: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "runs" / "smoke"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.ray
@pytest.mark.parametrize("pattern", ["experiment_state-*.json", "searcher-state-*.pkl", "search_gen_state-*.json",
                                     "tuner.pkl"])
def test_a_torn_snapshot_is_one_line_and_nothing_is_dropped(failed_once, tmp_path, capsys, pattern):
    spec, original = failed_once
    run_dir = _copy(original, tmp_path)
    newest = sorted((run_dir / "tune").glob(pattern))[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # an interrupted copy
    before, files = _state(run_dir), _digest(run_dir)
    assert len(before["rows"]) == 8

    for _ in range(2):  # and again: the same answer, never a loop of "resume with"
        code = cli.main(["run", str(spec), "--storage", str(tmp_path / "runs")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0, err
        assert newest.name in err and "--force" in err and "8 recorded trial(s)" in err
    assert _state(run_dir) == before and _digest(run_dir) == files


@pytest.mark.ray
def test_recorded_rows_without_a_snapshot_are_kept(failed_once, tmp_path, capsys):
    import shutil

    spec, original = failed_once
    run_dir = _copy(original, tmp_path)
    shutil.rmtree(run_dir / "tune")
    before = _state(run_dir)
    assert cli.main(["run", str(spec), "--storage", str(tmp_path / "runs")]) == 2
    assert "no Ray Tune snapshot" in capsys.readouterr().err
    assert _state(run_dir) == before


@pytest.mark.ray
def test_a_restore_tune_gives_up_on_drops_nothing(failed_once, tmp_path, capsys, monkeypatch):
    """Whatever makes Ray's restore fail (it then starts the experiment over), the orphan rule refuses."""
    from ray.tune.execution import tune_controller

    spec, original = failed_once
    run_dir = _copy(original, tmp_path)
    before = _state(run_dir)

    def broken(self, resume_config):
        raise ValueError("a restore that fails inside Tune")

    monkeypatch.setattr(tune_controller.TuneController, "resume", broken)
    code = cli.main(["run", str(spec), "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "did not restore" in err, err
    assert _state(run_dir) == before
    monkeypatch.undo()
    # The next rerun resumes the snapshot (no newer, empty one was written) and completes the sweep.
    assert cli.main(["run", str(spec), "--storage", str(tmp_path / "runs")]) == 0
    df = RunDir(run_dir).frame()
    assert len(df) == 8 and set(df["status"]) == {"ok"} and set(before["rows"]) == set(df["trial_id"])


def test_a_misspelt_selection_metric_is_refused_at_load(tmp_path):
    path = _spec_file(tmp_path, select={"by": "objectve", "mode": "min", "report": "test_dice", "reseed": 1})
    with pytest.raises(ConfigError, match=r"select.by: unknown metric 'objectve' \(did you mean 'objective'\?\)"):
        load_spec(path)
    path = _spec_file(tmp_path, select={"by": "objective", "report": "test_dcie"})
    with pytest.raises(ConfigError, match=r"select.report: unknown metric 'test_dcie' \(did you mean 'test_dice'\?\)"):
        load_spec(path)


@pytest.mark.ray
def test_a_sweep_started_with_a_misspelt_rule_completes_its_reseeds_once_fixed(tmp_path, local_ray):
    """A run directory from before select.by was checked: its searcher chose no trial to rerun over seeds
    under `objectve`; with the spec fixed, the rerun schedules them instead of stopping "before the end"
    on every rerun."""
    import dataclasses

    from benchmark.sweep.coordinator import run_sweep

    path = _spec_file(tmp_path, select={"by": "objective", "mode": "min", "report": "test_dice", "reseed": 1})
    spec = load_spec(path)
    spec = dataclasses.replace(spec, fixed={"train": {"max_epochs": 2}, "fake": {"epoch_seconds": 0.01}})
    typo = dataclasses.replace(spec, select=dataclasses.replace(spec.select, by="objectve"))
    first = run_sweep(typo, tmp_path / "runs")
    assert (first.done, first.exit_code) == (8, 0)  # what the old code accepted: no reruns over seeds
    fixed = run_sweep(spec, tmp_path / "runs")
    assert (fixed.done, fixed.planned, fixed.exit_code) == (10, 10, 0)
    df = RunDir(tmp_path / "runs" / "smoke").frame()
    assert sorted(df["reseed"].dropna().astype(int)) == [1, 1]
    assert run_sweep(spec, tmp_path / "runs").noop


def _as_before_the_module_move(path: Path) -> None:
    """Re-pickle `path` naming the modules of before 2026-11-29 (benchmark.searcher, benchmark.coordinator,
    benchmark.search_space, ...), as a run started then has them."""
    import importlib
    import sys

    import ray.cloudpickle as cloudpickle

    from benchmark.sweep.snapshots import LEGACY_MODULES

    data = cloudpickle.loads(path.read_bytes())
    renamed, aliased = [], []
    try:
        for old, new in LEGACY_MODULES.items():
            mod = importlib.import_module(new)
            for obj in list(vars(mod).values()):
                if getattr(obj, "__module__", None) == new and callable(obj):
                    obj.__module__ = old
                    renamed.append((obj, new))
            if old not in sys.modules:
                sys.modules[old] = mod
                aliased.append(old)
        blob = cloudpickle.dumps(data)
    finally:
        for obj, new in renamed:
            obj.__module__ = new
        for old in aliased:
            del sys.modules[old]
    assert any(old.encode() in blob for old in LEGACY_MODULES), path
    path.write_bytes(blob)


@pytest.mark.ray
def test_a_run_from_before_the_module_move_resumes(failed_once, tmp_path, capsys, monkeypatch):
    import json
    import sys

    from benchmark.sweep.snapshots import LEGACY_MODULES

    for old in LEGACY_MODULES:  # as in a fresh driver (an earlier restore in this process installed them)
        monkeypatch.delitem(sys.modules, old, raising=False)

    spec, original = failed_once
    run_dir = _copy(original, tmp_path)
    for pattern in ("tuner.pkl", "searcher-state-*.pkl"):
        _as_before_the_module_move(sorted((run_dir / "tune").glob(pattern))[-1])
    plan = json.loads((run_dir / "plan.json").read_text())
    for key in ("run_format", "written_by"):  # plan.json of that time
        plan.pop(key, None)
    (run_dir / "plan.json").write_text(json.dumps(plan))
    assert "benchmark.searcher" not in sys.modules
    code = cli.main(["run", str(spec), "--storage", str(tmp_path / "runs")])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    assert "Traceback" not in captured.err
    df = RunDir(run_dir).frame()
    assert len(df) == 8 and set(df["status"]) == {"ok"}
    assert json.loads((run_dir / "plan.json").read_text())["run_format"] >= 2


@pytest.mark.ray
def test_a_run_of_a_newer_format_names_the_version_to_use(failed_once, tmp_path, capsys):
    import json

    spec, original = failed_once
    run_dir = _copy(original, tmp_path)
    plan = json.loads((run_dir / "plan.json").read_text())
    plan.update(run_format=99, written_by="9.1.0")
    (run_dir / "plan.json").write_text(json.dumps(plan))
    before = _digest(run_dir)
    assert cli.main(["run", str(spec), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "tunevlseg 9.1.0 (run format 99)" in err and "tunevlseg>=9.1.0" in err
    assert _digest(run_dir) == before


@pytest.mark.ray
@pytest.mark.slow  # ~30 s on 2 busy cores: a whole sweep again
def test_force_leaves_no_run_running_and_no_name_twice(failed_once, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    spec, original = failed_once
    run_dir = _copy(original, tmp_path)
    import sqlite3

    with sqlite3.connect(run_dir / "mlflow.db") as db:  # what a SIGKILLed driver leaves (MLflow's own client
        # would keep the file open in this process, and follow it to previous/)
        db.execute("UPDATE runs SET status = 'RUNNING' WHERE run_uuid = (SELECT run_uuid FROM tags WHERE "
                   "key = 'tunevlseg.role' AND value = 'trial' LIMIT 1)")
    db.close()
    assert cli.main(["run", str(spec), "--storage", str(tmp_path / "runs"), "--force"]) == 1
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    names = [r.info.run_name for r in runs]
    assert len(names) == len(set(names)) == 10  # 8 trials + 2 cells, once each
    assert "RUNNING" not in {r.info.status for r in runs}
    previous = next((run_dir / "previous").iterdir())
    old = MlflowClient(f"sqlite:///{previous / 'mlflow.db'}")
    old_runs = old.search_runs([old.get_experiment_by_name("smoke").experiment_id], max_results=1000)
    assert len(old_runs) == 10 and all(r.info.artifact_uri.startswith(previous.as_uri()) for r in old_runs)


@pytest.mark.ray
def test_retry_failed_reruns_only_the_failed_trials_after_the_data_is_fixed(tmp_path, local_ray, capsys):
    from benchmark.sweep.studies import load_studies

    data = tmp_path / "kvasir.bin"
    data.write_text("corrupt")
    path = _spec_file(tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["fixed"]["fake"] = {"epoch_seconds": 0.01, "data_file": str(data)}
    spec["rules"] = [{"when": {"learner": "coop"}, "set": {"fake.data_file": None}}]  # coop reads no data
    path.write_text(yaml.safe_dump(spec))
    cmd = ["run", str(path), "--storage", str(tmp_path / "runs")]
    assert cli.main(cmd) == 1
    run_dir = tmp_path / "runs" / "smoke"
    first = RunDir(run_dir).frame().set_index("trial_id")
    assert (first[first.learner == "maple"]["status"] == "error").all() and len(first) == 8

    data.write_text("ok")  # the data is fixed; a plain rerun retries nothing but says how to
    assert cli.main(cmd) == 1
    err = capsys.readouterr().err
    assert "4 trial(s) failed" in err and "--retry-failed" in err
    assert cli.main(cmd + ["--retry-failed"]) == 0
    assert "--retry-failed: 4 failed trial(s) run again" in capsys.readouterr().out
    after = RunDir(run_dir).frame().set_index("trial_id")
    assert sorted(after.index) == sorted(first.index) and set(after["status"]) == {"ok"}
    coop = first[first.learner == "coop"].index
    cols = ["objective", "finished_at", "hp_lr"]
    assert after.loc[coop, cols].equals(first.loc[coop, cols])  # the good rows are untouched
    maple = first[first.learner == "maple"].index
    assert (after.loc[maple, "hp_lr"] == first.loc[maple, "hp_lr"]).all()  # the same parameters again
    assert {cid: [t.state.name for t in s.trials] for cid, s in load_studies(run_dir).items()} == \
        {cid: ["COMPLETE"] * 4 for cid in ("clipseg_coop_kvasir", "clipseg_maple_kvasir")}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id], "tags.`tunevlseg.role` = 'trial'", max_results=100)
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    assert not any("error" in r.data.tags for r in runs)


@pytest.mark.ray
@pytest.mark.slow  # ~30 s on 2 busy cores: a resume and a sync in a fresh process
def test_a_resume_honours_its_storages_and_sync_finds_the_recorded_server(failed_once, tmp_path, capsys):
    import json

    from benchmark.sweep.studies import load_studies

    spec, original = failed_once
    run_dir = _copy(original, tmp_path)
    server, studies = tmp_path / "server" / "mlflow.db", tmp_path / "studies" / "optuna.db"
    server.parent.mkdir()
    studies.parent.mkdir()
    code = cli.main(["run", str(spec), "--storage", str(tmp_path / "runs"), "--mlflow", f"sqlite:///{server}",
                     "--optuna-storage", f"sqlite:///{studies}"])
    assert code == 0, capsys.readouterr().err[-2000:]
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["mlflow"]["uri"] == f"sqlite:///{server}" and plan["optuna_storage"] == f"sqlite:///{studies}"
    stored = load_studies(run_dir, f"sqlite:///{studies}")
    assert {cid: [t.state.name for t in s.trials] for cid, s in stored.items()} == \
        {cid: ["COMPLETE"] * 4 for cid in ("clipseg_coop_kvasir", "clipseg_maple_kvasir")}

    server.unlink()  # the server comes back without what it missed during an outage
    (run_dir / "mlflow.db").unlink()
    import subprocess
    import sys

    # the hint a dead server prints (no --mlflow), in a fresh process (this one keeps the old file open)
    sync = subprocess.run([sys.executable, "-m", "benchmark", "mlflow", "sync", str(run_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert sync.returncode == 0 and "8 run(s) created" in sync.stdout, sync.stdout + sync.stderr[-2000:]
    assert server.is_file() and not (run_dir / "mlflow.db").exists()


def test_predict_names_masks_of_inputs_sharing_a_stem_apart(tmp_path, capsys):
    """a.png and a.jpg: two masks, none overwritten, and the count says what is on disk (issue 25, item 7)."""
    from PIL import Image

    from trainables.model import build_model

    model = build_model({"vlsm_config": "tiny", "learner": "coop", "seed": 0,
                         "learner_config": {"prompt_depth": 2}}).eval()
    model.save_artifact(tmp_path / "artifact", data={"dataset": "kvasir", "prompt": "polyp."})
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "a.jpg", "b.png"):
        Image.new("RGB", (12, 10), (200, 30, 30)).save(images / name)
    out = tmp_path / "masks"
    assert cli.main(["predict", "--artifact", str(tmp_path / "artifact"), "--images", str(images),
                     "--out", str(out), "--device", "cpu"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a_jpg.png", "a_png.png", "b.png"]
    assert "wrote 3 mask(s)" in capsys.readouterr().out


def test_a_lock_take_over_waits_for_the_dead_drivers_late_writes(tmp_path):
    """A SIGKILLed driver's Ray workers still write checkpoints into tune/ for about a second; the next
    driver restores only once the run directory is quiet (issue 25, item 7)."""
    import json
    import threading
    import time

    from benchmark.sweep import lock as L

    run = tmp_path / "run"
    (run / "tune" / "trial_0").mkdir(parents=True)
    RunDir(run).lock_file.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "x", "started_at": 0,
                                                 "heartbeat_at": time.time() - 500}))
    stop = time.time() + 1.5

    def late_worker():
        n = 0
        while time.time() < stop:
            (run / "tune" / "trial_0" / f"checkpoint_{n:06d}").mkdir()
            n += 1
            time.sleep(0.2)

    writer = threading.Thread(target=late_worker)
    writer.start()
    t0 = time.time()
    held = L.RunLock(run, stale_s=120).acquire()
    waited = time.time() - t0
    writer.join()
    held.release()
    assert held.took_over and waited >= 1.5 and held.quiet_after >= 1.5, waited
    newest = max(p.stat().st_mtime for p in (run / "tune").rglob("*"))
    assert t0 + waited - newest >= L.QUIET_S - 0.1  # acquired only after QUIET_S without a write


@pytest.mark.ray
@pytest.mark.parametrize("errno_name", ["ENOSPC", pytest.param("EACCES", marks=pytest.mark.slow)])
def test_a_run_directory_that_stops_taking_writes_mid_run_is_one_line(failed_once, tmp_path, capsys, monkeypatch,
                                                                       errno_name):
    """A full disk, or trials/ turned unwritable, while the retried trials finish (issue 25, item 6)."""
    import errno

    from benchmark.results import records

    spec, original = failed_once
    run_dir = _copy(original, tmp_path)
    before = _state(run_dir)
    real = records.atomic_write_table

    def failing(table, path):
        if "trials" in str(path):
            code = getattr(errno, errno_name)
            raise OSError(code, __import__("os").strerror(code), str(path))
        return real(table, path)

    monkeypatch.setattr(records, "atomic_write_table", failing)
    code = cli.main(["run", str(spec), "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    assert "stopped taking writes" in err and "resume with: tunevlseg run" in err and "/trials/" in err
    assert _state(run_dir)["rows"] == before["rows"]
    monkeypatch.undo()
    assert cli.main(["run", str(spec), "--storage", str(tmp_path / "runs")]) == 0  # the hint's rerun completes


@pytest.mark.ray
@pytest.mark.parametrize("damage", ["plan.json", "mlflow.db", "parquet"])
def test_a_damaged_run_file_is_one_line_for_run_sync_and_tables(failed_once, tmp_path, capsys, damage):
    spec, original = failed_once
    run_dir = _copy(original, tmp_path)
    target = {"plan.json": run_dir / "plan.json", "mlflow.db": run_dir / "mlflow.db",
              "parquet": run_dir / "trials" / "clipseg_coop_kvasir.parquet"}[damage]
    target.write_bytes(target.read_bytes()[:100] if damage != "mlflow.db" else b"not a database" * 100)
    commands = [["run", str(spec), "--storage", str(tmp_path / "runs")], ["mlflow", "sync", str(run_dir)]]
    if damage == "parquet":
        commands.append(["tables", str(run_dir), "--out", str(tmp_path / "tables"), "--no-mlflow"])
    for cmd in commands:
        code = cli.main(cmd)
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, (cmd, err)
        assert target.name in err, (cmd, err)
