"""What the MLflow mirror writes besides metrics, Ray-free (`tunevlseg tables` uses it too): MLflow's
standard system tags, the experiment kind, a cell parent run's params, what the objective is, and the UI
link that opens the runs list."""

from __future__ import annotations

from typing import Any

# mlflow.experimentKind for classic model training in MLflow 3 (its UI's ExperimentKind enum). MLflow 3.17.2's
# own UI no longer reads it: its bundled JS derives the experiment kind from the `workflowType` URL
# parameter, else a per-browser setting that starts as "genai" (a feature flag hard-wired on in the OSS build
# puts that before the tag). The tag stays for Databricks and older UIs; links carry WORKFLOW_PARAM.
EXPERIMENT_KIND = "custom_model_development"
WORKFLOW_PARAM = "workflowType=machine_learning"
UI_DEFAULT = "http://127.0.0.1:5000"  # `make mlflow-ui`


def ui_link(experiment_id: str | None, base: str = UI_DEFAULT) -> str:
    """The UI address of an experiment's runs list in the model-training view (MLflow 3.17's routes)."""
    where = f"experiments/{experiment_id}/runs" if experiment_id else "experiments"
    return f"{base.rstrip('/')}/#/{where}?{WORKFLOW_PARAM}"


# What a trial's `objective` is, by `train.objective` (trainables.trial.TrainConfig); the sweep minimises it.
OBJECTIVES = {"last_val_loss": "last-epoch validation loss",
              "best_val_loss": "best validation loss over the epochs",
              "best_val_dice": "minus the best validation Dice over the epochs"}


def objective_text(trial_config: dict[str, Any] | None) -> str:
    """`objective = last-epoch validation loss (minimised)`, from a cell's trial config."""
    kind = ((trial_config or {}).get("train") or {}).get("objective") or "last_val_loss"
    return f"objective = {OBJECTIVES.get(kind, kind)} (minimised)"


def system_tags(source: str) -> dict[str, str]:
    """MLflow's standard system tags, as `mlflow.start_run` would set them for a local script."""
    import getpass

    from trainables import resources

    tags = {"mlflow.source.name": source, "mlflow.source.type": "LOCAL", "tunevlseg.version": resources.version()}
    try:
        tags["mlflow.user"] = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        pass
    sha, dirty = resources.git_commit()
    if sha:
        tags["mlflow.source.git.commit"] = sha
        tags["tunevlseg.git_dirty"] = str(dirty).lower()
    return tags


def cell_params(cell) -> dict[str, str]:
    """A cell parent run's params: its fixed settings (the nested trial config before the searched values)
    and its search space, one `search.<name>` per searched parameter."""
    import json

    # As plan.json holds it (tuples as lists), so `mlflow sync` rebuilding it from there writes the same strings.
    params = {k: v for k, v in flatten(json.loads(json.dumps(cell.config, default=str))).items()}
    params.update({f"search.{p.name}": p.domain() for p in cell.params})
    params["objective"] = objective_text(cell.config)
    params.update({"trials": cell.trials, "seed": cell.seed if cell.params else None, "space": cell.space,
                   "resources.cpu": cell.resources["cpu"], "resources.gpu": cell.resources["gpu"]})
    return {k: str(v) for k, v in params.items()}


def cell_params_from_plan(entry: dict[str, Any]) -> dict[str, str]:
    """`cell_params` of a cell as the run's plan.json fingerprint (version 2) records it: what `tunevlseg
    mlflow sync` gives a parent run it creates, equal to what the live mirror gave it."""
    from types import SimpleNamespace

    from benchmark.plan.search_space import Param

    params = tuple(Param(name=name, kind=p["kind"], target=p["target"], applies_to=(), low=p.get("low"),
                         high=p.get("high"), log=bool(p.get("log")),
                         choices=tuple(p["choices"]) if p.get("choices") is not None else None)
                   for name, p in (entry.get("params") or {}).items())
    return cell_params(SimpleNamespace(config=entry.get("config") or {}, params=params, trials=entry.get("trials"),
                                       seed=entry.get("seed"), space=entry.get("space"),
                                       resources=entry.get("resources") or {"cpu": None, "gpu": None}))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
