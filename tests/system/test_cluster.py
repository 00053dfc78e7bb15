"""Cluster recipes; the real two-node test is marked `cluster` (`make test-cluster`). The preflight's own tests
are in tests/benchmark/sweep/test_preflight.py."""

import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
SCRIPT = CLUSTER / "local-two-node.sh"
PY = sys.executable


# ---- launcher configs, KubeRay manifest, runtime env -----------------------------------------------------


@pytest.mark.parametrize("name", ["onprem.yaml", "aws.yaml"])
def test_launcher_config_passes_ray_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / name).read_text())
    config = prepare_config(copy.deepcopy(raw))  # what `ray up` does before validating
    validate_config(config)
    starts = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2, "head and workers must both run with token auth"
    assert "~/.ray/auth_token" in config["file_mounts"], "the token must reach every node"
    assert any("make install" in c for c in config["setup_commands"])
    # The validation is real: the same config with a misspelt key is rejected.
    bad = copy.deepcopy(config)
    bad["setup_comands"] = bad.pop("setup_commands")
    with pytest.raises(Exception, match="setup_comands"):
        validate_config(bad)


def test_aws_head_takes_no_trials_and_has_gpu_worker_types():
    raw = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    assert any("--num-cpus=0" in c for c in raw["head_start_ray_commands"])
    gpu_types = [t for n, t in types.items() if n != raw["head_node_type"]]
    assert gpu_types and all(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in gpu_types)


def test_kuberay_manifest_has_gpu_group_rwx_volume_and_token_auth():
    docs = {d["kind"] + "/" + d["metadata"]["name"]: d
            for d in yaml.safe_load_all((CLUSTER / "kuberay.yaml").read_text()) if d}
    rc = docs["RayCluster/tunevlseg"]
    assert rc["apiVersion"] == "ray.io/v1"
    spec = rc["spec"]
    import ray

    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (gpu,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
    worker = gpu["template"]["spec"]["containers"][0]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    claim = docs["PersistentVolumeClaim/tunevlseg-shared"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for pod in (spec["headGroupSpec"]["template"]["spec"], gpu["template"]["spec"]):
        vols = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["name"]: m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert vols["shared"]["persistentVolumeClaim"]["claimName"] == "tunevlseg-shared"
        assert mounts["shared"] == "/mnt/shared"
    service = docs["Service/tunevlseg-mlflow"]
    assert service["spec"]["type"] == "ClusterIP"  # never exposed outside the cluster
    args = " ".join(docs["Deployment/tunevlseg-mlflow"]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--artifacts-destination=/mnt/shared/" in args and "--backend-store-uri=sqlite:////" in args


def test_runtime_env_is_valid_for_ray():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert set(env) <= {"working_dir", "excludes", "env_vars", "py_modules", "pip", "conda"}
    RuntimeEnv(**env)
    assert {".git", ".venv"} <= set(env["excludes"])


def test_scripts_parse_and_reject_bad_usage():
    for script in ("local-two-node.sh", "mlflow-server.sh"):
        subprocess.run(["bash", "-n", str(CLUSTER / script)], check=True)
        r = subprocess.run([str(CLUSTER / script), "bogus"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and "usage" in r.stderr


def test_local_cluster_refuses_a_state_dir_too_long_for_ray_sockets(tmp_path):
    r = subprocess.run([str(SCRIPT), "up", str(tmp_path / ("x" * 40))], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "too long" in r.stderr
    assert not (tmp_path / ("x" * 40) / "pids").exists()  # nothing was started


# ---- the real two-node cluster ---------------------------------------------------------------------------


def _session_members(sid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[3]) == sid:  # state ppid pgrp session ...
                out.append(int(d.name))
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _results(run_dir: Path) -> dict[str, list[dict]]:
    """trial dir name -> reported results (Tune's result.json, appended across restarts)."""
    out = {}
    for f in (run_dir / "tune").glob("*/result.json"):
        lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        out[f.parent.name] = lines
    return out


SPEC = """\
name: cluster-smoke
trainable: trainables.fake.fake_trainable
axes: {{vlsm: [clipseg], learner: [coop], dataset: [kvasir]}}
fixed:
  train: {{max_epochs: {epochs}}}
  fake: {{epoch_seconds: {seconds}, log_dir: {logs}}}
search: {{trials: 3, n_startup_trials: 3, metric: objective, mode: min}}
resources: {{cpu: 1, gpu: 0}}
execution: {{max_failures: 2, checkpoints_to_keep: 2}}
data: {{roots: {{kvasir: {data}}}}}
tracking: {{mlflow: true}}
select: {{by: objective, mode: min, report: test_dice}}
"""

DRIVER = """\
import sys
from benchmark.sweep.coordinator import run_sweep
from benchmark.plan.spec import load_spec
r = run_sweep(load_spec(sys.argv[1]), sys.argv[2], address=sys.argv[3], mlflow_uri=sys.argv[4])
print(f"DRIVER planned={r.planned} done={r.done} failed={r.failed} interrupted={r.interrupted}", flush=True)
sys.exit(r.exit_code)
"""


@pytest.mark.cluster
@pytest.mark.slow
def test_two_node_sweep_survives_losing_the_worker_node():
    """A tiny sweep on head 127.0.0.2 + worker 127.0.0.3 (token auth) with the MLflow server; the worker's
    raylet is SIGKILLed mid-trial. Every planned trial must finish, the interrupted one resumed from its
    checkpoint on the head, and neither Parquet nor MLflow may hold duplicates."""
    state = Path(tempfile.mkdtemp(prefix="tvc", dir="/tmp"))  # short: Ray's socket paths are length-limited
    log = lambda msg: print(f"[cluster-test {time.strftime('%H:%M:%S')}] {msg}", flush=True)
    driver = None
    sessions: dict[str, int] = {}
    try:
        t0 = time.time()
        up = subprocess.run([str(SCRIPT), "up", str(state)], capture_output=True, text=True, timeout=240)
        assert up.returncode == 0, up.stdout + up.stderr
        sessions = {p.stem: int(p.read_text()) for p in (state / "pids").glob("*.pid")}
        log(f"cluster up in {time.time() - t0:.0f} s: sessions {sessions}")
        env_lines = (state / "env").read_text().split()
        env = dict(kv.split("=", 1) for kv in env_lines if "=" in kv)
        child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        address, mlflow_uri, storage = env["RAY_ADDRESS"], env["MLFLOW_TRACKING_URI"], Path(env["TUNEVLSEG_STORAGE"])

        # Bad input first: the preflight names the node and the fix, quickly.
        wrong = state / "wrong_token"
        wrong.write_text("0" * 64)
        t1 = time.time()
        r = subprocess.run([PY, "-m", "benchmark.sweep.preflight", "--storage", str(storage), "--address", address],
                           env={**child_env, "RAY_AUTH_TOKEN_PATH": str(wrong)}, capture_output=True, text=True,
                           timeout=60, cwd=REPO)
        assert r.returncode == 1 and "rejected this driver's auth token" in r.stderr, r.stderr
        log(f"preflight, wrong token: refused in {time.time() - t1:.1f} s")
        t1 = time.time()
        r = subprocess.run([PY, "-m", "benchmark.sweep.preflight", "--storage", str(storage), "--address", address,
                            "--mlflow", mlflow_uri, "--data", str(state / "no-such-data")],
                           env=child_env, capture_output=True, text=True, timeout=120, cwd=REPO)
        lines = [x for x in r.stderr.splitlines() if x.startswith("preflight:")]
        assert r.returncode == 1 and len(lines) == 2, r.stderr
        assert {x.split()[2] for x in lines} == {"127.0.0.2:", "127.0.0.3:"}, lines
        log(f"preflight, missing data root: both nodes named in {time.time() - t1:.1f} s")
        r = subprocess.run([PY, "-m", "benchmark.sweep.preflight", "--storage", str(storage), "--address", address,
                            "--mlflow", mlflow_uri, "--data", str(state)],
                           env=child_env, capture_output=True, text=True, timeout=120, cwd=REPO)
        assert r.returncode == 0 and "preflight: ok" in r.stdout, r.stderr

        # The sweep.
        logs = state / "trial-logs"
        logs.mkdir()
        spec = state / "cluster-smoke.yaml"
        spec.write_text(SPEC.format(epochs=8, seconds=1.0, logs=logs, data=state))
        driver_log = state / "driver.log"
        with open(driver_log, "w") as out:
            driver = subprocess.Popen([PY, "-c", DRIVER, str(spec), str(storage), address, mlflow_uri], cwd=REPO,
                                      env=child_env, stdout=out, stderr=subprocess.STDOUT)
        run_dir = storage / "cluster-smoke"
        victim, deadline = None, time.time() + 240
        while victim is None:
            assert time.time() < deadline, f"no trial reached epoch 2 on the worker\n{driver_log.read_text()[-3000:]}"
            assert driver.poll() is None, driver_log.read_text()[-3000:]
            for name, rows in _results(run_dir).items():
                if rows and rows[-1].get("node_ip") == "127.0.0.3" and rows[-1].get("epoch", -1) >= 1:
                    victim = name
            time.sleep(0.5)
        raylet = [p for p in _session_members(sessions["worker"]) if _comm(p) == "raylet"]
        assert len(raylet) == 1
        os.kill(raylet[0], signal.SIGKILL)
        killed_at_epoch = _results(run_dir)[victim][-1]["epoch"]
        log(f"killed the worker's raylet (pid {raylet[0]}) while {victim} was at epoch {killed_at_epoch}")

        rc = driver.wait(timeout=420)
        text = driver_log.read_text()
        assert rc == 0, text[-4000:]
        log("driver finished: " + next(x for x in text.splitlines() if x.startswith("DRIVER")))

        # Every planned trial, once, all ok (Parquet).
        from benchmark.results import records
        from benchmark.results.run_dir import RunDir

        rows = records.read_rows(RunDir(run_dir).cell_file("clipseg_coop_kvasir"))
        assert sorted(r["trial_index"] for r in rows) == [0, 1, 2]
        assert len({r["trial_id"] for r in rows}) == 3
        assert all(r["status"] == "ok" and r["epochs_run"] == 8 for r in rows), rows

        # The interrupted trial: started on the worker, resumed from its checkpoint on the head.
        results = _results(run_dir)[victim]
        nodes = [x["node_ip"] for x in results]
        assert nodes[0] == "127.0.0.3" and nodes[-1] == "127.0.0.2", nodes
        resumed = [x for x in results if x["node_ip"] == "127.0.0.2"]
        assert resumed[0]["resumed_from"] > 0 and resumed[0]["starts"] == 2, resumed[0]
        assert max(x["epoch"] for x in results if x["node_ip"] == "127.0.0.3") >= 1
        cell, index = results[0]["config"]["cell_id"], int(results[0]["config"]["trial_index"])
        starts = (logs / f"{cell}_{index}.log").read_text().split("\n")
        assert [s for s in starts if s][0] == "start 0" and len([s for s in starts if s]) == 2, starts
        log(f"{victim}: epochs on worker up to {max(x['epoch'] for x in results if x['node_ip'] == '127.0.0.3')}, "
            f"resumed on head from epoch {resumed[0]['resumed_from']} (start #{resumed[0]['starts']})")

        # MLflow: one run per trial, all finished, none duplicated.
        from mlflow.tracking import MlflowClient

        client = MlflowClient(mlflow_uri)
        exp = client.get_experiment_by_name("cluster-smoke")
        runs = client.search_runs([exp.experiment_id], "tags.`tunevlseg.role` = 'trial'")
        assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(r["trial_id"] for r in rows)
        assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
        log(f"Parquet: 3/3 trials ok, 3 distinct trial ids; MLflow: {len(runs)} trial runs, all FINISHED")
        log(f"total {time.time() - t0:.0f} s")
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
        down = subprocess.run([str(SCRIPT), "down", str(state)], capture_output=True, text=True, timeout=120)
        leftovers = {name: _session_members(sid) for name, sid in sessions.items()}
        assert down.returncode == 0, down.stderr
        assert not any(leftovers.values()), f"processes left behind: {leftovers}"
        subprocess.run(["rm", "-rf", str(state)], check=False)


def test_spec_template_is_a_valid_spec(tmp_path):
    """The cluster test's spec must stay loadable as the spec format evolves (checked without a cluster)."""
    from benchmark.plan.matrix import build_plan
    from benchmark.plan.spec import load_spec

    path = tmp_path / "s.yaml"
    path.write_text(SPEC.format(epochs=8, seconds=1.0, logs=tmp_path, data=tmp_path))
    plan = build_plan(load_spec(path))
    assert plan.total_trials == 3 and plan.cells[0].id == "clipseg_coop_kvasir"
    compile(textwrap.dedent(DRIVER), "driver", "exec")
