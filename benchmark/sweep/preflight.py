"""Cluster checks before any trial starts: every problem is one line naming the node and the fix.

    problems = run_preflight("/mnt/nfs/tunevlseg/runs", {"kvasir": "/data/kvasir"},
                             "http://10.0.0.1:5000", address="10.0.0.1:6379")
    if problems:
        raise PreflightError(problems)

    python -m benchmark.sweep.preflight --storage DIR [--data ROOT ...] [--mlflow URI] [--address HOST:PORT]

What is checked, and why (orchestration.md §6-§7, measured on Ray 2.60):
- The Ray head answers and accepts this driver's auth token. Ray 2.60 turns token auth on for clusters
  you start; a driver without RAY_AUTH_MODE=token and the token only gets a generic `ConnectionError`
  after ~20 s, so the token is tried first with a short GCS call that names the actual cause.
- The storage path is absolute (trials run in temporary working directories) and, on every node, is the
  same place as on the driver: the driver writes a marker, a tiny task pinned to each node reads it and
  writes its own. Tune checkpoints are written by the trial's node and read back by whichever node
  resumes it, so a node-local path breaks resumption after a node loss, late and confusingly.
- Every dataset root exists on every node (a trial landing on a node without its data fails only then).
- The MLflow server answers from every node (trials and the driver talk to it; `sqlite:` URIs are
  written by the driver only, so they are checked on the driver).
- Every node imports the same tunevlseg code as the driver (version and a hash of the sources): a stale
  checkout on one worker gives results that differ by node.
Every wait is bounded: no check can hang the sweep's start.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import uuid
from pathlib import Path
from typing import Iterable, Mapping

from benchmark.results.run_dir import RunDir
from benchmark.sweep.storage import mlflow_problem, storage_problem
from trainables.config import ConfigError

PREFLIGHT_DIR = ".preflight"
PACKAGES = ("benchmark", "trainables")  # whose sources must be identical on every node
DISTRIBUTION = "tunevlseg"


class PreflightError(RuntimeError):
    """The cluster is not ready; `problems` holds one line per problem."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"cluster preflight found {len(self.problems)} problem(s):\n{lines}")


def require_preflight(*args, **kwargs) -> None:
    """`run_preflight`, raising `PreflightError` when anything is wrong."""
    problems = run_preflight(*args, **kwargs)
    if problems:
        raise PreflightError(problems)


# ---- checks that need no cluster -------------------------------------------------------------------------


def _named_roots(data_roots: Mapping[str, str] | Iterable[str] | str | None) -> list[tuple[str, str]]:
    if data_roots is None:
        return []
    if isinstance(data_roots, (str, os.PathLike)):
        return [(str(data_roots), str(data_roots))]
    if isinstance(data_roots, Mapping):
        return [(str(k), str(v)) for k, v in data_roots.items()]
    return [(str(p), str(p)) for p in data_roots]


def parse_address(address: str) -> tuple[str, int] | None:
    """host:port of a Ray GCS, or None for forms that are not a plain address (auto, ray://)."""
    if address in ("auto", "local") or "://" in address:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host, int(port)


def connection_problem(address: str, timeout: float = 10.0) -> str | None:
    """Can this driver reach the GCS at `address` and does it accept our token? (bounded by `timeout`)."""
    hp = parse_address(address)
    if hp is None:
        return None
    try:
        socket.create_connection(hp, timeout=min(timeout, 5.0)).close()
    except OSError as e:
        return (f"Ray head {address} is unreachable ({e.strerror or e}); start the cluster (cluster/README.md) "
                "or fix --address / RAY_ADDRESS")
    # A short authenticated GCS call, in a thread so that a half-open GCS cannot block us.
    outcome: dict[str, BaseException | None] = {}

    def call():
        try:
            from ray._raylet import GcsClient

            GcsClient(address=address).internal_kv_get(b"session_name", namespace=b"session", timeout=timeout)
            outcome["error"] = None
        except BaseException as e:  # noqa: BLE001 - reported below
            outcome["error"] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout + 5.0)
    if "error" not in outcome:
        return (f"Ray head {address} accepted a connection but did not answer within {timeout + 5:.0f} s; check "
                "`ray status` on the head")
    err = outcome["error"]
    if err is None:
        return None
    text = str(err)
    if type(err).__name__ == "AuthenticationError" or "InvalidAuthToken" in text or "Unauthenticated" in text:
        mode = os.environ.get("RAY_AUTH_MODE", "unset")
        return (f"Ray head {address} rejected this driver's auth token (RAY_AUTH_MODE={mode}); export "
                "RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN_PATH=<file> or RAY_AUTH_TOKEN; the head "
                "keeps it in ~/.ray/auth_token), see cluster/README.md 'Authentication'")
    if isinstance(err, ImportError):
        return None  # private API moved: ray.init below reports what it reports
    first = text.splitlines()[0] if text else ""
    return f"Ray head {address}: {type(err).__name__}: {first}; check `ray status` on the head"


def code_fingerprint() -> tuple[str | None, str | None]:
    """(installed tunevlseg version, short hash of the benchmark/ and trainables/ sources) of this process."""
    return _make_probe()[1]()


# ---- the per-node probe ----------------------------------------------------------------------------------


def _make_probe():
    """(probe, fingerprint). The probe runs on every node. Both are closures so that cloudpickle ships
    them by value: the probe still runs (and reports) on a node where tunevlseg is not installed, instead
    of failing to unpickle."""

    def fingerprint() -> tuple[str | None, str | None]:
        import hashlib
        import importlib.metadata
        import importlib.util
        from pathlib import Path

        try:
            version = importlib.metadata.version(DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            version = None
        h, found = hashlib.sha256(), False
        for pkg in PACKAGES:
            try:
                spec = importlib.util.find_spec(pkg)
            except (ImportError, ValueError):
                spec = None
            if spec is None or not spec.submodule_search_locations:
                continue
            found = True
            root = Path(list(spec.submodule_search_locations)[0])
            for f in sorted(root.rglob("*.py")):
                h.update(f.relative_to(root.parent).as_posix().encode())
                h.update(f.read_bytes())
        return version, (h.hexdigest()[:12] if found else None)

    def probe(storage: str, marker_dir: str, token: str, node_key: str, roots: list, mlflow_uri: str | None,
              http_timeout: float) -> dict:
        import os
        import socket
        import urllib.request

        out: dict = {"host": socket.gethostname(), "storage": None, "missing": [], "mlflow": None}
        # Storage: the driver's marker must be visible here, and ours must be writable.
        try:
            if not os.path.isdir(storage):
                raise FileNotFoundError(f"{storage} does not exist on this node")
            driver = os.path.join(marker_dir, "driver")
            seen = None
            if os.path.exists(driver):
                with open(driver) as f:
                    seen = f.read()
            if seen is not None:
                with open(os.path.join(marker_dir, node_key), "w") as f:
                    f.write(token)
            else:  # prove at least that the path is writable here
                probe_file = os.path.join(storage, f".preflight-{node_key}")
                with open(probe_file, "w") as f:
                    f.write(token)
                os.remove(probe_file)
            out["storage"] = "ok" if seen == token else "not_shared"
        except Exception as e:  # noqa: BLE001 - reported to the driver
            out["storage"] = f"{type(e).__name__}: {e}"
        out["missing"] = [(name, p) for name, p in roots if not os.path.isdir(p)]
        if mlflow_uri and mlflow_uri.startswith(("http://", "https://")):
            try:
                with urllib.request.urlopen(mlflow_uri.rstrip("/") + "/health", timeout=http_timeout) as r:
                    out["mlflow"] = "ok" if r.status == 200 else f"HTTP {r.status}"
            except Exception as e:  # noqa: BLE001
                out["mlflow"] = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        out["version"], out["fingerprint"] = fingerprint()
        return out

    return probe, fingerprint


def _node_problems(label: str, r: dict, storage: str, mlflow_uri: str | None, mine: tuple, multi: bool) -> list[str]:
    problems = []
    s = r["storage"]
    if s == "not_shared":
        problems.append(f"node {label}: storage {storage} is not shared with the driver (this node does not see the "
                        f"driver's marker file); mount the same shared filesystem (NFS) at {storage} on every node")
    elif s != "ok":
        problems.append(f"node {label}: storage {storage} is not usable ({s}); create it on the shared filesystem and "
                        "make it writable by the Ray user on every node")
    for name, path in r["missing"]:
        what = f"dataset root for {name!r}" if name != path else "dataset root"
        problems.append(f"node {label}: {what} {path} is missing; put the datasets on the shared filesystem or copy "
                        "them to the same path on every node (cluster/README.md 'Where data lives')")
    if r["mlflow"] not in (None, "ok"):
        problems.append(f"node {label}: cannot reach MLflow at {mlflow_uri} ({r['mlflow']}); run the server bound to "
                        "the cluster network (cluster/mlflow-server.sh) and pass that address, not localhost")
    version, fingerprint = r.get("version"), r.get("fingerprint")
    if fingerprint is None:
        problems.append(f"node {label}: the tunevlseg code (benchmark/, trainables/) is not importable; install the "
                        "project in the Ray venv on every node (`make install` there, see cluster/README.md) or ship "
                        "it with cluster/runtime_env.yaml")
    elif multi and (version, fingerprint) != mine:
        problems.append(f"node {label}: tunevlseg {version} (code {fingerprint}) differs from the driver's "
                        f"{mine[0]} (code {mine[1]}); install the same checkout on every node")
    return problems


def _local_probe(storage: str, marker_dir: str, token: str, roots, mlflow_uri, http_timeout) -> dict:
    return _make_probe()[0](storage, marker_dir, token, "driver-check", roots, mlflow_uri, http_timeout)


def run_preflight(storage_path: str | os.PathLike, data_roots: Mapping[str, str] | Iterable[str] | str | None = None,
                  mlflow_uri: str | None = None, address: str | None = None, *, timeout: float = 60.0) -> list[str]:
    """Check the cluster (or this machine) before a sweep; returns the problems found, [] when ready.

    Uses the current Ray connection if there is one, else connects to `address` (and disconnects again);
    with neither, checks this machine only. `data_roots`: {dataset: root} or a list of roots.
    `timeout` bounds every wait (the probe tasks together, each HTTP call gets at most 10 s).
    """
    storage = str(storage_path)
    roots = _named_roots(data_roots)
    problems = [p for p in (storage_problem(storage), mlflow_problem(mlflow_uri)) if p]
    problems += [f"dataset root {p!r} is not absolute; trials run in temporary directories, give an absolute path"
                 for _, p in roots if not Path(p).expanduser().is_absolute()]
    if problems:  # shape errors first: probing with a relative path would only add noise
        return problems
    storage = str(Path(storage).expanduser())
    try:
        Path(storage).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return [f"storage {storage}: cannot create it on the driver ({e.strerror or e}); create it on the shared "
                "filesystem and make it writable"]
    http_timeout = min(10.0, timeout)

    import ray

    connected_here = False
    if not ray.is_initialized() and address:
        problem = connection_problem(address, timeout=min(timeout, 15.0))
        if problem:
            return [problem]
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        except Exception as e:  # noqa: BLE001
            return [f"Ray head {address}: cannot connect ({type(e).__name__}: {e}); check RAY_AUTH_MODE=token, the "
                    "token and `ray status` on the head"]
        connected_here = True

    token = uuid.uuid4().hex
    marker_dir = f"{storage.rstrip('/')}/{PREFLIGHT_DIR}/{token[:12]}"
    try:
        if not _write_driver_marker(marker_dir, token):
            return [f"storage {storage}: the driver cannot write {marker_dir}; make the storage writable"]
        mine = code_fingerprint()
        if not ray.is_initialized():  # no cluster: this machine is the only node
            r = _local_probe(storage, marker_dir, token, roots, mlflow_uri, http_timeout)
            return _node_problems(f"{socket.gethostname()} (this machine)", r, storage, mlflow_uri, mine, multi=False)
        return problems + _probe_nodes(storage, marker_dir, token, roots, mlflow_uri, timeout, http_timeout, mine)
    finally:
        _remove_markers(marker_dir)
        if connected_here:
            ray.shutdown()


def _probe_nodes(storage, marker_dir, token, roots, mlflow_uri, timeout, http_timeout, mine) -> list[str]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if not nodes:
        return ["the Ray cluster has no alive node; check `ray status` on the head"]
    probe = ray.remote(num_cpus=0, max_retries=0)(_make_probe()[0])
    refs, keys = {}, {}
    for n in nodes:
        ip, name = n["NodeManagerAddress"], n.get("NodeName") or ""
        label = ip if name in ("", ip) else f"{ip} ({name})"
        strategy = NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ref = probe.options(scheduling_strategy=strategy).remote(
            storage, marker_dir, token, n["NodeID"][:16], roots, mlflow_uri, http_timeout)
        refs[ref], keys[ref] = label, n["NodeID"][:16]
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
    problems = []
    multi = len(nodes) > 1
    for ref in ready:
        label = refs[ref]
        try:
            r = ray.get(ref, timeout=5)
        except Exception as e:  # noqa: BLE001 - the node died or the task could not run there
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            problems.append(f"node {label}: the check task failed ({type(e).__name__}: {first[:200]}); see the "
                            "node's Ray logs (/tmp/ray/session_latest/logs)")
            continue
        problems += _node_problems(label, r, storage, mlflow_uri, mine, multi)
    for ref in pending:
        ray.cancel(ref, force=True)
        problems.append(f"node {refs[ref]}: did not run the check task within {timeout:.0f} s; the node is "
                        "overloaded or unreachable from the head (check `ray status` and its raylet log)")
    if not problems:
        # The other direction: what the nodes wrote must be visible to the driver too.
        blind = [refs[ref] for ref in ready if not Path(marker_dir, keys[ref]).exists()]
        problems += [f"node {label}: storage {storage} is not shared with the driver (the driver does not see the "
                     f"node's marker); mount the same shared filesystem at {storage} on every node"
                     for label in blind]
    return problems


def _write_driver_marker(marker_dir: str, token: str) -> bool:
    try:
        os.makedirs(marker_dir, exist_ok=True)
        with open(os.path.join(marker_dir, "driver"), "w") as f:
            f.write(token)
        return True
    except Exception:  # noqa: BLE001
        return False


def _remove_markers(marker_dir: str) -> None:
    try:
        import shutil

        shutil.rmtree(marker_dir, ignore_errors=True)
        parent = os.path.dirname(marker_dir)
        if os.path.isdir(parent) and not os.listdir(parent):
            os.rmdir(parent)
    except Exception:  # noqa: BLE001 - best effort
        pass


def check_shared_storage(run_dir: Path, nodes: list[dict]) -> None:
    """Every node sees the run directory the driver writes: checked at each sweep's start on a cluster of several
    nodes (the coordinator's cluster check; also without the full preflight of `--address`)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    run_dir.mkdir(parents=True, exist_ok=True)
    marker = RunDir(run_dir).storage_check_marker()
    marker.write_text("tunevlseg")

    @ray.remote(num_cpus=0)
    def _sees(path: str) -> bool:
        return os.path.exists(path)

    try:
        refs = {n["NodeManagerAddress"]: _sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(str(marker)) for n in nodes}
        blind = [ip for ip, ok in zip(refs, ray.get(list(refs.values()), timeout=120)) if not ok]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise ConfigError(f"storage {run_dir.parent} is not shared: node(s) {', '.join(blind)} cannot see it; "
                          "use a path on a filesystem mounted at the same place on every node")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.sweep.preflight", description=__doc__.splitlines()[0])
    p.add_argument("--storage", required=True, help="the sweep's storage path (shared on a cluster)")
    p.add_argument("--data", action="append", default=[], help="a dataset root that every node needs (repeatable)")
    p.add_argument("--mlflow", default=os.environ.get("MLFLOW_TRACKING_URI"), help="MLflow tracking URI")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray head host:port (default: RAY_ADDRESS)")
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args(argv)
    problems = run_preflight(args.storage, args.data, args.mlflow, args.address, timeout=args.timeout)
    for line in problems:
        print(f"preflight: {line}", file=sys.stderr)
    if not problems:
        print("preflight: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["PreflightError", "run_preflight", "require_preflight", "connection_problem", "code_fingerprint",
           "check_shared_storage"]
