"""The sweep-level MLflow run's outputs: what `tunevlseg tables` wrote (report.md, the tables, the figures)
and the run's embeddings (Fig. 4), on the run that is the parent of the sweep's cell runs. Torch- and
Ray-free, as `tunevlseg tables` must stay.

One run per sweep id (tag `tunevlseg.role = sweep`; created by `tunevlseg run`, or here for a sweep run
before there was one), found again and updated on every call; its note is the report, so the run page
opens on it. Every file under the output folder and under `<run>/embeddings/` is logged, so a figure a
later version adds is logged without a change here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from benchmark.results.run_dir import RunDir

# MLflow keeps at most 8,000 characters in a run tag (MAX_TAG_VAL_LENGTH in 3.17) and warns when it cuts;
# a longer report is cut here at a line, with a pointer to the whole file among the run's artifacts.
_MAX_NOTE = 8_000
_CUT = "\n\n*(cut to fit MLflow's note; the whole report is this run's artifact `report.md`)*\n"


def note_text(report: str, limit: int = _MAX_NOTE) -> str:
    if len(report) <= limit:
        return report
    head = report[: limit - len(_CUT)]
    return head[: head.rfind("\n") + 1 or len(head)] + _CUT


def default_uri(run_dir: str | Path) -> str | None:
    """The run directory's own tracking store, if the sweep used it."""
    db = RunDir(run_dir).mlflow_db
    return f"sqlite:///{db.resolve()}" if db.is_file() else None


EMBEDDINGS_DIR = "embeddings"  # `tunevlseg embeddings --out <run>/embeddings` (make benchmark)


def log_outputs(run_dir: str | Path, files: list[Path], out_dir: str | Path | None, uri: str | None = None) -> str | None:
    """Log `files` and every other file under `out_dir` (at their paths relative to it), and the run's
    `embeddings/` folder when there is one, to the sweep's run; returns its run id, None when the run
    directory has no MLflow store (or no plan.json naming its sweep)."""
    rd = RunDir(run_dir)
    uri = uri or default_uri(run_dir)
    if uri is None or not rd.plan_file.is_file():
        return None
    if uri == default_uri(run_dir):
        from benchmark.mlflow_mirror.paths import repoint

        repoint(run_dir)
    sweep_id = json.loads(rd.plan_file.read_text()).get("sweep_id")
    spec = _spec_name(rd)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(spec) if spec else None
    if exp is None or not sweep_id:
        return None
    flt = f"tags.`tunevlseg.sweep` = '{sweep_id}' and tags.`tunevlseg.role` = 'sweep'"
    runs = client.search_runs([exp.experiment_id], flt, max_results=1)
    if runs:
        run_id = runs[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        from benchmark.mlflow_mirror.tags import system_tags  # Ray-free

        tags = {**system_tags("tunevlseg tables"), "tunevlseg.sweep": sweep_id, "tunevlseg.role": "sweep"}
        run_id = client.create_run(exp.experiment_id, run_name=f"{spec} (sweep)", tags=tags).info.run_id
    out_dir = Path(out_dir) if out_dir is not None else None
    inside = set()
    if out_dir is not None and out_dir.is_dir():
        client.log_artifacts(run_id, str(out_dir))
        inside = {Path(f).resolve() for f in out_dir.rglob("*") if f.is_file()}
    for f in files:
        if Path(f).resolve() in inside:
            continue
        sub = os.path.dirname(os.path.relpath(f, out_dir)) if out_dir is not None else ""
        client.log_artifact(run_id, str(f), sub if sub and not sub.startswith("..") else None)
    emb = rd.path / EMBEDDINGS_DIR
    if emb.is_dir() and (out_dir is None or emb.resolve() != out_dir.resolve()):
        client.log_artifacts(run_id, str(emb), EMBEDDINGS_DIR)
    report = out_dir / "report.md" if out_dir is not None else None
    if report is not None and report.is_file():
        client.set_tag(run_id, "mlflow.note.content", note_text(report.read_text(encoding="utf-8")))
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _spec_name(rd: RunDir) -> str | None:
    for row in rd.all_rows():
        return row.get("spec")
    return rd.path.name
