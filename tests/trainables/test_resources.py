"""The shipped folders through one resources module (checkout or wheel), specs by name, --version,
provenance, one spelling of every name, and `data check` on a wrong root."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.plan.matrix import build_plan, match_cell
from benchmark.plan.spec import load_spec
from benchmark.results import records
from trainables import resources
from trainables.catalog import LEARNERS
from trainables.config import ConfigError
from trainables.data.cards import load_card
from trainables.registry import UnknownNameError

REPO = Path(__file__).resolve().parents[2]


def test_a_checkout_serves_its_own_folders():
    assert resources.is_checkout() and resources.root() == REPO
    for kind, rel in resources.FOLDERS.items():
        assert resources.path(kind) == REPO / rel and resources.path(kind).is_dir(), kind
    assert "table3" in resources.spec_names() and "mini" in resources.spec_names()


def test_an_installed_package_serves_the_shipped_copies(tmp_path, monkeypatch):
    """Outside a checkout (no setup.cfg beside the package) the wheel's `_shipped/` folder is the root, and
    no git commit is recorded even when the site-packages sit inside some other git repository."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.setattr(resources, "_CHECKOUT", tmp_path)
    monkeypatch.setattr(resources, "SHIPPED", tmp_path / "pkg" / "_shipped")
    assert not resources.is_checkout()
    assert resources.path("cards") == tmp_path / "pkg" / "_shipped" / "datasets"
    assert resources.git_commit() == (None, False)
    prov = records.provenance()
    assert prov["git_sha"] == "unknown" and '"tunevlseg": "' in prov["versions"]


def test_specs_by_name_and_by_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    by_name = load_spec("table3")
    assert by_name.path == str(REPO / "experiments" / "table3.yaml")
    assert load_spec(REPO / "experiments" / "table3.yaml") == by_name
    # A shipped spec's relative paths resolve against the project folders, not the working directory.
    assert load_spec("mini").vlsms["clipseg"].weights == str(REPO / "models" / "clipseg-mini")
    # ... the reruns-over-seeds mini spec too (issue 19), shipped like the others
    seeds = load_spec("mini_seeds")
    assert "mini_seeds" in resources.spec_names() and seeds.select.reseed == 2
    assert seeds.vlsms["clipseg"].weights == str(REPO / "models" / "clipseg-mini")
    # A user's file of the same name wins over the shipped one.
    (tmp_path / "mini.yaml").write_text("axes: {learner: [coop], dataset: [kvasir]}\n")
    assert load_spec("mini.yaml").axes.learner == ("coop",)
    with pytest.raises(FileNotFoundError, match=r"spec 'tabel3' does not exist \(did you mean 'table3'\?\)"):
        load_spec("tabel3")


def test_cli_version_and_spec_names(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"tunevlseg {resources.version()} (checkout ")
    assert main(["plan", "smoke"]) == 0
    assert "smoke: 2 cells, 8 trials" in capsys.readouterr().out
    assert main(["plan", "smok"]) == 2
    assert "did you mean 'smoke'?" in capsys.readouterr().err


def test_either_spelling_of_a_name():
    assert LEARNERS.get("shared-attention") is LEARNERS.get("shared_attention")
    with pytest.raises(UnknownNameError, match=r"unknown learner 'shared_atention' \(did you mean 'shared_attention'\?\)"):
        LEARNERS.get("shared_atention")
    assert load_card("mini-polyp").name == "mini_polyp"
    with pytest.raises(ConfigError, match=r"did you mean 'kvasir'\?"):
        load_card("kvasri")


def test_a_spec_may_spell_names_as_cell_ids_do(tmp_path):
    raw = ("axes: {vlsm: [clipseg], learner: [shared-attention, coop], dataset: [mini-polyp], "
           "variant: [default, no-upsampler]}\nrules: [{when: {learner: shared-attention}, set: {train.lr: 0.1}}]\n")
    (tmp_path / "s.yaml").write_text(raw)
    plan = build_plan(load_spec(tmp_path / "s.yaml"))
    cell = plan.cell("clipseg_shared_attention_mini_polyp")  # either spelling finds the cell
    assert cell.id == "clipseg_shared-attention_mini-polyp"
    assert cell.keys == {"vlsm": "clipseg", "learner": "shared_attention", "dataset": "mini_polyp",
                         "variant": "default"}
    assert cell.config["train"]["lr"] == 0.1
    assert {c.variant for c in plan.cells} == {"default", "no_upsampler"}


def test_a_wrong_cell_suggests_the_closest_and_lists_a_few():
    known = [f"clipseg_coop_ds{i}" for i in range(45)] + ["clipseg_shared-attention_kvasir"]
    assert match_cell("clipseg_shared_attention_kvasir", known) == "clipseg_shared-attention_kvasir"
    with pytest.raises(ConfigError) as e:
        match_cell("clipseg_shared-atention_kvasir", known, where="--cell")
    msg = str(e.value)
    assert "did you mean 'clipseg_shared-attention_kvasir'?" in msg and "(46 in all)" in msg
    assert msg.count("clipseg_coop_ds") <= 8 and "\n" not in msg


def test_data_check_on_a_root_without_images_says_so_once(tmp_path, capsys):
    (tmp_path / "kvasir" / "images").mkdir(parents=True)
    code = main(["data", "check", "kvasir", "--root", str(tmp_path), "--annotations", "card"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "has no images/ folder" in err and f"did you mean --root {tmp_path / 'kvasir'}?" in err


def test_data_check_caps_per_file_problems(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    code = main(["data", "check", "kvasir", "--root", str(tmp_path), "--annotations", "card", "--no-decode"])
    out = capsys.readouterr().out
    assert code == 1
    from trainables.data.check import check_dataset

    report = check_dataset("kvasir", tmp_path, splits=("test",), annotations="card", decode=False)
    assert report.splits[0].entries == 100 and report.splits[0].images == 0  # listed, but none on disk
    lines = [ln for ln in out.splitlines() if ln.startswith("  ") and "not found" in ln]
    assert len(lines) == 20 and "more (--all lists every one)" in out


def test_datasets_folder_is_not_a_package():
    # A `datasets/__init__.py` would shadow Hugging Face `datasets` for every process started here.
    assert not (REPO / "datasets" / "__init__.py").exists()
    assert not list((REPO / "datasets").rglob("*.py")), "datasets/ holds data cards only"
    spec = importlib.util.find_spec("benchmark")
    assert spec is not None and Path(spec.origin).parent == REPO / "benchmark"
