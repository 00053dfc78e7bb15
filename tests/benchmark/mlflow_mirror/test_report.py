"""The sweep-level MLflow run that `tunevlseg tables` writes: report.md as its note (cut to MLflow's tag limit
at a line, with a pointer to the artifact), the outputs as artifacts, one run per sweep however often
`tables` runs."""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmark.mlflow_mirror.report import _MAX_NOTE, log_outputs, note_text

MINI = Path(__file__).resolve().parents[3] / "results" / "mini"


def test_note_is_cut_at_a_line_and_points_to_the_artifact():
    short = "# report\nline\n"
    assert note_text(short) == short
    long = "".join(f"row {i:05d} | some table cell\n" for i in range(2000))
    cut = note_text(long)
    assert len(cut) <= _MAX_NOTE
    body, pointer = cut.split("\n\n*(cut", 1)
    assert long.startswith(body) and body.endswith("some table cell\n")  # whole lines only
    assert "report.md" in pointer


def test_tables_log_one_sweep_run_with_report_note_and_artifacts(tmp_path):
    from mlflow.tracking import MlflowClient

    run = tmp_path / "mini"
    shutil.copytree(MINI, run, ignore=shutil.ignore_patterns("tables", "embeddings"))
    uri = f"sqlite:///{(run / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=uri)
    client.create_experiment("mini", artifact_location=(run / "mlartifacts").as_uri())
    out = tmp_path / "tables"
    out.mkdir()
    report = "".join(f"| row {i} | {i / 7:.4f} |\n" for i in range(1500))  # well over 8,000 characters
    (out / "report.md").write_text(report)
    (out / "table3.md").write_text("| a | b |\n")
    files = [out / "report.md", out / "table3.md"]

    first = log_outputs(run, files, out)
    again = log_outputs(run, files, out)  # `tables` rerun: the same sweep run, not a second one

    assert first is not None and again == first
    exp = client.get_experiment_by_name("mini")
    runs = client.search_runs([exp.experiment_id], "tags.`tunevlseg.role` = 'sweep'")
    assert [r.info.run_id for r in runs] == [first]
    r = runs[0]
    assert r.info.status == "FINISHED"
    note = r.data.tags["mlflow.note.content"]
    assert len(note) <= _MAX_NOTE and report.startswith(note.split("\n\n*(cut", 1)[0])
    assert sorted(a.path for a in client.list_artifacts(first)) == ["report.md", "table3.md"]


def test_no_store_no_run(tmp_path):
    run = tmp_path / "mini"
    shutil.copytree(MINI, run, ignore=shutil.ignore_patterns("tables", "embeddings"))
    assert log_outputs(run, [], tmp_path) is None  # the run directory has no mlflow.db: nothing to mirror


def test_every_output_file_and_the_embeddings_join_the_sweep_run(tmp_path):
    """Files other commands add later (a new figure, Fig. 4's embeddings) are logged without naming them."""
    from mlflow.tracking import MlflowClient

    run = tmp_path / "mini"
    shutil.copytree(MINI, run, ignore=shutil.ignore_patterns("tables", "embeddings"))
    client = MlflowClient(tracking_uri=f"sqlite:///{(run / 'mlflow.db').resolve()}")
    client.create_experiment("mini", artifact_location=(run / "mlartifacts").as_uri())
    out = run / "tables"
    (out / "figures").mkdir(parents=True)
    (out / "report.md").write_text("# report\n")
    (out / "figures" / "new_figure.png").write_bytes(b"png")
    (run / "embeddings").mkdir()
    (run / "embeddings" / "points.csv").write_text("x,y\n")
    run_id = log_outputs(run, [out / "report.md"], out)
    paths = set()
    stack = [None]
    while stack:
        for a in client.list_artifacts(run_id, stack.pop()):
            (stack.append(a.path) if a.is_dir else paths.add(a.path))
    assert paths == {"report.md", "figures/new_figure.png", "embeddings/points.csv"}
