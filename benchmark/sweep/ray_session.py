"""The Ray session of a sweep: start or join Ray and shut it down after, check that every cell's trial fits a
node of the cluster, quieten the libraries' chatter, and make SIGTERM stop the sweep the way Ctrl-C does.

    with ray_session(address, num_cpus, num_gpus, verbose):
        check_cluster(plan, run_dir)
        with sigterm_stops_tune() as terminated:
            tuner.fit()
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmark.plan.matrix import Plan
from trainables.config import ConfigError


def check_cluster(plan: Plan, run_dir: Path) -> None:
    """Per-trial resources must fit a node, and on several nodes the storage must be shared."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    most = {k: max((n["Resources"].get(k, 0.0) for n in nodes), default=0.0) for k in ("CPU", "GPU")}
    for c in plan.cells:
        for key, res in (("CPU", "cpu"), ("GPU", "gpu")):
            need = c.resources[res]
            if need > most[key] + 1e-9:
                have = "no GPU" if key == "GPU" and most[key] == 0 else f"at most {most[key]:g} {key} per node"
                raise ConfigError(f"cell {c.id} asks for {need:g} {key} per trial but the Ray cluster has {have}; "
                                  f"lower resources.{res} in the spec (or a rule), or connect to a bigger cluster")
    if len(nodes) > 1:
        from benchmark.sweep.preflight import check_shared_storage

        check_shared_storage(run_dir, nodes)


def quiet_libraries(verbose: bool) -> None:
    """Readable progress lines instead of Ray's status table and library chatter (unless --verbose)."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if verbose:
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter honours verbose=0 completely
    import mlflow  # noqa: F401 - mlflow sets its logger level on import: import first, then quieten it
    import optuna

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # Restored trials that never reported anything are expected after a kill; Ray warns about each.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # On Ctrl-C Tune suggests `Tuner.restore(...)`; our own one-line hint names the command to rerun.
    logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)
    # A failed trial's traceback: our progress line names the error, the full text is in the trial's
    # error.txt, the Parquet `error` column and the MLflow run (and on screen with --verbose).
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)  # "NaN or Inf found": a failed trial's +inf

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def connect_ray(address: str | None, num_cpus: int | None, num_gpus: float | None, verbose: bool) -> bool:
    """Start or join Ray; returns whether we started it (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.INFO if verbose else logging.WARNING,
                              "log_to_driver": verbose}
    if address:
        kwargs["address"] = address
    else:
        kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False)
    ray.init(**kwargs)
    return True


@contextmanager
def ray_session(address: str | None, num_cpus: int | None, num_gpus: float | None, verbose: bool):
    """Ray for one sweep: joined or started (`connect_ray`), and shut down after it when this driver started it."""
    started_ray = connect_ray(address, num_cpus, num_gpus, verbose)
    try:
        yield
    finally:
        if started_ray:
            import ray

            ray.shutdown()


class sigterm_stops_tune:
    """SIGTERM (a batch system's stop, `kill`) stops the sweep the way Ctrl-C does: Tune saves the state and
    `fit` returns. Ray's own driver handler would `sys.exit` mid-callback and print a C++ stack dump."""

    def __enter__(self) -> list[int]:
        import signal
        import threading

        self.got: list[int] = []
        self.previous = None
        if threading.current_thread() is not threading.main_thread():
            return self.got

        def on_term(signum, frame):
            self.got.append(signum)
            handler = signal.getsignal(signal.SIGINT)  # Tune's while fit runs: stop and save
            if callable(handler):
                handler(signal.SIGINT, frame)
            else:
                raise KeyboardInterrupt

        self.previous = signal.signal(signal.SIGTERM, on_term)
        return self.got

    def __exit__(self, *exc) -> None:
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
