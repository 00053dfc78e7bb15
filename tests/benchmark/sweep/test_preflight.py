"""The cluster preflight (benchmark/sweep/preflight.py): relative paths, missing data, a dead MLflow, storage a
node cannot share, other code on a node, an unreachable head, all named before a sweep starts; the probe runs
on a node without the project."""

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from benchmark.sweep.preflight import (
    PreflightError,
    _make_probe,
    _node_problems,
    code_fingerprint,
    connection_problem,
    require_preflight,
    run_preflight,
)

PY = sys.executable


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---- preflight without Ray -------------------------------------------------------------------------------


def test_preflight_rejects_relative_paths_before_touching_anything(tmp_path):
    t0 = time.time()
    problems = run_preflight("runs", ["data/kvasir"], "sqlite:///mlflow.db")
    assert time.time() - t0 < 5
    assert len(problems) == 3
    assert "storage 'runs' is not absolute" in problems[0]
    assert "MLflow URI 'sqlite:///mlflow.db' is relative" in problems[1]
    assert "dataset root 'data/kvasir' is not absolute" in problems[2]
    assert not (Path.cwd() / "runs").exists()
    with pytest.raises(PreflightError, match=r"3 problem\(s\)"):
        require_preflight("runs", ["data/kvasir"], "sqlite:///mlflow.db")


def test_preflight_on_this_machine_names_missing_data_and_dead_mlflow(tmp_path):
    data = tmp_path / "data"
    (data / "kvasir").mkdir(parents=True)
    port = _closed_port()
    t0 = time.time()
    problems = run_preflight(tmp_path / "runs", {"kvasir": str(data / "kvasir"), "isic": str(data / "isic")},
                             f"http://127.0.0.1:{port}")
    assert time.time() - t0 < 10
    assert len(problems) == 2, problems
    assert "(this machine): dataset root for 'isic'" in problems[0] and str(data / "isic") in problems[0]
    assert f"cannot reach MLflow at http://127.0.0.1:{port}" in problems[1] and "mlflow-server.sh" in problems[1]
    assert (tmp_path / "runs").is_dir() and not (tmp_path / "runs" / ".preflight").exists()  # markers removed
    assert run_preflight(tmp_path / "runs", {"kvasir": str(data / "kvasir")}, None) == []


def test_probe_reports_storage_the_node_cannot_share(tmp_path):
    probe, _ = _make_probe()
    storage = tmp_path / "runs"
    storage.mkdir()
    # The driver's marker is not where this "node" looks: what a node-local path looks like from a worker.
    r = probe(str(storage), str(storage / ".preflight" / "elsewhere"), "tok", "node1", [], None, 1.0)
    assert r["storage"] == "not_shared"
    problems = _node_problems("10.0.0.3", r, str(storage), None, code_fingerprint(), multi=True)
    assert len(problems) == 1
    assert problems[0].startswith(f"node 10.0.0.3: storage {storage} is not shared") and "NFS" in problems[0]
    r = probe(str(tmp_path / "absent"), str(tmp_path / "absent" / "m"), "tok", "node1", [], None, 1.0)
    assert "does not exist on this node" in r["storage"]


def test_node_with_different_code_is_named():
    r = {"storage": "ok", "missing": [], "mlflow": None, "version": "0.1.0", "fingerprint": "000000000000"}
    (problem,) = _node_problems("10.0.0.3", r, "/mnt/nfs/runs", None, ("0.1.0", "abcdefabcdef"), multi=True)
    assert "node 10.0.0.3: tunevlseg 0.1.0 (code 000000000000) differs from the driver's" in problem
    r["fingerprint"] = None
    (problem,) = _node_problems("10.0.0.3", r, "/mnt/nfs/runs", None, ("0.1.0", "abcdefabcdef"), multi=True)
    assert "is not importable" in problem


def test_unreachable_ray_head_fails_fast_with_the_fix():
    t0 = time.time()
    problem = connection_problem(f"127.0.0.1:{_closed_port()}", timeout=5)
    assert time.time() - t0 < 8
    assert "is unreachable" in problem and "RAY_ADDRESS" in problem


# ---- preflight on a local Ray ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    import ray

    if ray.is_initialized():  # another module's Ray: use it, leave it to its owner
        yield ray
        return
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_preflight_on_local_ray_finds_each_problem_quickly(local_ray, tmp_path):
    node_ip = local_ray.nodes()[0]["NodeManagerAddress"]
    port = _closed_port()
    t0 = time.time()
    problems = run_preflight(tmp_path / "runs", {"kvasir": str(tmp_path / "missing")}, f"http://127.0.0.1:{port}",
                             timeout=30)
    assert time.time() - t0 < 30
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"node {node_ip}") and "dataset root for 'kvasir'" in problems[0]
    assert problems[1].startswith(f"node {node_ip}") and "cannot reach MLflow" in problems[1]
    assert run_preflight("relative/runs", [], None)[0].startswith("storage 'relative/runs' is not absolute")
    (tmp_path / "ok").mkdir()
    assert run_preflight(tmp_path / "runs", [str(tmp_path / "ok")], None, timeout=30) == []
    assert local_ray.is_initialized()  # an existing connection is used, not closed


def test_probe_runs_on_a_node_without_the_project(tmp_path):
    """The probe is shipped by value: on a node where `benchmark`/`trainables` cannot be imported it still
    runs, checks storage and data, and reports the missing code instead of failing to unpickle."""
    from ray import cloudpickle

    blob = tmp_path / "probe.pkl"
    blob.write_bytes(cloudpickle.dumps(_make_probe()[0]))
    (tmp_path / "runs").mkdir()
    code = textwrap.dedent(f"""
        import sys, pickle
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("benchmark", "trainables"):
                    raise ImportError("not installed on this node")
        sys.meta_path.insert(0, Block())
        probe = pickle.loads(open({str(blob)!r}, "rb").read())
        r = probe({str(tmp_path / 'runs')!r}, "/nonexistent/m", "t", "n", [("kvasir", "/nonexistent/kvasir")], None, 1)
        print(r["storage"], r["missing"], r["fingerprint"])
    """)
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["not_shared", "[('kvasir',", "'/nonexistent/kvasir')]", "None"]
