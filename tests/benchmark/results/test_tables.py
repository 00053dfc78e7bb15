"""Tables 2–5 from trial rows: golden tests against the paper's own numbers, selection rules, partial runs,
bad input, renderers, and the `tunevlseg tables` command (which must never import torch)."""

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from benchmark.plan import search_space
from benchmark.plan.search_space import EVERY_PROMPT_LEARNER, Param
from benchmark.plan.spec import Selection
from benchmark.results import records as R
from benchmark.results import selection as S
from benchmark.results import tables as T
from benchmark.results.run_dir import RunDir
from trainables import catalog
from trainables.catalog import LEARNERS, TEXT, VLSMS
from trainables.config import ConfigError
from trainables.learners.config import PromptConfig

REPO = Path(__file__).resolve().parents[3]
PAPER = REPO / "results" / "paper"
VLSM_KEY = {VLSMS.get(k).display_name: k for k in VLSMS.names()}
LEARNER_KEY = {LEARNERS.get(k).display_name: k for k in LEARNERS.names()}
DATASET_KEY = {d.display: d.key for d in T.DATASETS}


def paper_as_trials(number: int) -> pd.DataFrame:
    """The paper's table as if it were a run: one finished trial per cell, test_dice = value / 100."""
    paper = pd.read_csv(PAPER / f"table{number}.csv")
    rows = []
    for _, r in paper.iterrows():
        variant = T.VARIANTS[number]
        if number == 4:
            variant = "gaussian_init" if r["init"] == "Gaussian" else "default"
        for disp, key in DATASET_KEY.items():
            rows.append(dict(vlsm=VLSM_KEY[r["vlsm"]], learner=LEARNER_KEY[r["learner"]], dataset=key,
                             variant=variant, status="ok", test_dice=r[disp] / 100, objective=0.5,
                             trial_index=0, trial_id=f"{r['vlsm']}-{r['learner']}-{variant}-{key}"))
    return pd.DataFrame(rows)


def trial(**kw) -> dict:
    base = dict(vlsm="clipseg", learner="coop", dataset="kvasir", variant="default", status="ok",
                test_dice=0.5, objective=0.5, trial_index=0)
    base.update(kw)
    base.setdefault("trial_id", f"t{base['trial_index']}-{base['dataset']}-{base['learner']}")
    return base


# ---------------------------------------------------------------------------------------------------------
# Golden: the paper's numbers in, the paper's table out


@pytest.mark.parametrize("number", [3, 4, 5])
def test_golden_paper_tables_reproduce_cells_means_and_stds(number):
    table = T.TABLE_BUILDERS[number](T.check_trials(paper_as_trials(number)))
    paper = pd.read_csv(PAPER / f"table{number}.csv")
    ours = pd.read_csv(pd.io.common.StringIO(T.render(table, "csv")), keep_default_na=False)
    labels = ["vlsm", "learner"] + (["init"] if number == 4 else [])
    merged = paper.merge(ours, on=labels, suffixes=("_paper", "_ours"), validate="one_to_one")
    assert len(merged) == len(paper)
    for col in [d.display for d in T.DATASETS] + ["mean", "std"]:
        for _, r in merged.iterrows():
            if pd.isna(r[f"{col}_paper"]):  # E2E rows: the paper prints "-"
                continue
            assert f"{float(r[f'{col}_ours']):.2f}" == f"{r[f'{col}_paper']:.2f}", (r[labels].tolist(), col)


def test_golden_table3_named_rows_and_average_across_methods():
    table = T.table3(T.check_trials(paper_as_trials(3)))
    md = T.render(table, "md")
    assert "| CLIPSeg | VPT |" in md and "79.63 ± 12.67 |" in md
    assert "| Average across Methods |" in md and "73.10 ± 6.24 |" in md
    mean, std, k = table.average
    assert (T.fmt(mean), T.fmt(std), k) == ("73.10", "6.24", 8)
    # population std, not pandas' default sample std (12.86 for MaPLe)
    maple = [i for i, r in enumerate(table.rows) if r.learner == "maple"][0]
    assert T.fmt(table.std[maple]) == "12.20"
    assert T.fmt(table.dice.loc[maple].std(ddof=1)) == "12.86"


def test_golden_table5_average_across_methods():
    table = T.table5(T.check_trials(paper_as_trials(5)))
    assert (T.fmt(table.average[0]), T.fmt(table.average[1])) == ("70.51", "5.40")
    assert [r.learner for r in table.rows] == [l for _, l in T.TABLE5_ROWS]


def test_golden_comparison_is_zero_and_flags_a_changed_cell():
    trials = paper_as_trials(3)
    hit = (trials["learner"] == "maple") & (trials["dataset"] == "bkai")
    trials.loc[hit, "test_dice"] += 0.01  # 84.82 -> 85.82
    cmp = T.compare(T.table3(T.check_trials(trials)))
    d = cmp.diff
    maple = [i for i, r in enumerate(cmp.table.rows) if r.learner == "maple"][0]
    assert d.loc[maple, "bkai"] == pytest.approx(1.0)
    others = d.drop(columns=["mean", "std"]).to_numpy()
    assert np.nansum(np.abs(others)) == pytest.approx(1.0)
    md = T.render(cmp, "md")
    assert "85.82 / 84.82 (+1.00)" in md and "73.12 / 73.10 (+0.02)" in md  # 73.1025 + 1/80 = 73.115, half-up
    long = pd.read_csv(pd.io.common.StringIO(T.render(cmp, "csv")))
    row = long[(long["learner"] == "Maple") & (long["column"] == "BKAI")].iloc[0]
    assert (row["ours"], row["paper"], row["diff"]) == (85.82, 84.82, 1.0)


def test_shipped_paper_copies_match_shared_originals():
    shared = Path(__file__).resolve().parents[4] / "shared" / "paper"
    if not shared.is_dir():
        pytest.skip("shared paper directory not present on this machine")
    for n in (3, 4, 5):
        assert (PAPER / f"table{n}.csv").read_bytes() == (shared / f"table{n}.csv").read_bytes()


def test_half_up_rounding_and_missing():
    assert T.fmt(65.325) == "65.33" and T.fmt(62.905) == "62.91"  # the paper's two exact halves
    assert T.fmt(100 * 0.6532499999999999) == "65.33"  # binary noise below the half does not decide it
    assert T.fmt(65.3249) == "65.32"
    assert T.fmt(float("nan")) == T.fmt(None) == "–"
    assert T.fmt_signed(-1e-12) == "0.00" and T.fmt_signed(0.5) == "+0.50"


# ---------------------------------------------------------------------------------------------------------
# Selection rules


def _cell_trials():
    return pd.DataFrame([
        trial(trial_index=0, objective=0.30, test_dice=0.70),
        trial(trial_index=1, objective=0.20, test_dice=0.60),  # best validation
        trial(trial_index=2, objective=0.40, test_dice=0.90),  # best test
        trial(trial_index=3, objective=0.10, test_dice=0.95, status="diverged"),  # not a candidate
        trial(trial_index=4, objective=float("nan"), test_dice=0.99, status="ok"),  # no objective
    ])


def test_selection_val_and_best_test_pick_different_trials_and_count():
    trials = T.check_trials(_cell_trials())
    val = S.select(trials, S.rule_for("val")).iloc[0]
    best = S.select(trials, S.rule_for("best_test")).iloc[0]
    assert (val["trial_index"], val["test_dice"]) == (1, 0.60)
    assert (best["trial_index"], best["test_dice"]) == (4, 0.99)
    assert (val["n_trials"], val["n_ok"]) == (5, 4)
    assert S.select(trials, Selection(mode="max")).iloc[0]["trial_index"] == 2


def test_tables_and_selected_parquet_choose_by_one_rule_the_specs_select(tmp_path):
    """The spec's `select` (here: highest objective) decides selected.parquet, and `tables` reads it back
    from the run directory: the two never disagree on a cell's trial."""
    rows = [R.trial_row(spec="mini", cell=dict(vlsm="clipseg", learner="coop", dataset="kvasir", variant="default"),
                        cell_id="clipseg_coop_kvasir", trial_index=int(r["trial_index"]), trial_id=f"t{r['trial_index']}",
                        hp={}, result={"objective": r["objective"], "test_dice": r["test_dice"], "status": r["status"]},
                        error=None, prov={}, started_at=None, finished_at=None)
            for r in _cell_trials().to_dict("records")]
    run = RunDir(tmp_path)
    run.write_cell("clipseg_coop_kvasir", rows)
    rule = Selection(by="objective", mode="max")
    run.write_selected({"clipseg_coop_kvasir": {"planned": 5}}, run.rows(), rule)
    assert RunDir(tmp_path).selection() == rule
    selected = R.read_rows(run.selected_file)[0]
    table = T.table3(T.read_trials(tmp_path), "val", RunDir(tmp_path).selection())
    coop = [i for i, r in enumerate(table.rows) if r.vlsm == "clipseg" and r.learner == "coop"][0]
    assert selected["trial_index"] == 2 and table.dice.loc[coop, "kvasir"] == 100 * selected["test_dice"]
    assert "the trial with the highest objective" in table.header


def test_selection_ties_go_to_lower_trial_index_regardless_of_order():
    trials = T.check_trials(pd.DataFrame([trial(trial_index=7, objective=0.2, test_dice=0.1),
                                          trial(trial_index=3, objective=0.2, test_dice=0.9)]))
    assert S.select(trials, Selection()).iloc[0]["trial_index"] == 3
    assert S.select(trials.iloc[::-1], Selection()).iloc[0]["trial_index"] == 3


def test_table_header_names_the_selection_rule():
    trials = T.check_trials(_cell_trials())
    md_val = T.render(T.table3(trials, "val"), "md")
    md_best = T.render(T.table3(trials, "best_test"), "md")
    assert "best validation objective" in md_val and "| 60.00 |" in md_val
    assert "best test Dice" in md_best and "| 99.00 |" in md_best
    with pytest.raises(ValueError, match="allowed: val, best_test"):
        S.rule_for("oracle")


# ---------------------------------------------------------------------------------------------------------
# Partial runs and bad input


def test_partial_run_gives_partial_table_with_dashes_counts_and_coverage():
    rows = [trial(trial_index=i, test_dice=0.5 + i / 100, objective=1 - i / 10) for i in range(6)]
    rows[5]["status"] = "error"
    rows.append(trial(dataset="busi", learner="vpt", trial_index=0, test_dice=0.8))
    table = T.table3(T.check_trials(pd.DataFrame(rows)))
    md = T.render(table, "md")
    coop = [i for i, r in enumerate(table.rows) if r.vlsm == "clipseg" and r.learner == "coop"][0]
    assert T.fmt(table.dice.loc[coop, "kvasir"]) == "54.00"  # trial 4: lowest objective among finished
    assert np.isnan(table.dice.loc[coop, "bkai"])
    assert "| CLIPSeg | CoOp | – | – | 54.00 |" in md and "54.00 ± 0.00 (1/10)" in md
    assert "(2/8 methods, some partial)" in md
    counts = T.render(table, "md", counts=True)
    assert "| CLIPSeg | CoOp | – | – | 5/6 |" in counts and "| CLIPSeg | VPT | – | – | – | – | – | 1 |" in counts
    # beside the paper: cells compare, a mean over 1 of 10 datasets does not
    cmp = T.compare(table)
    assert cmp.diff.loc[coop, "kvasir"] == pytest.approx(54.00 - 73.53)
    assert np.isnan(cmp.diff.loc[coop, "mean"]) and not cmp.average_comparable
    cmp_md = T.render(cmp, "md")
    assert "54.00 (1/10) / 62.91 |" in cmp_md and "(partial) / 73.10 |" in cmp_md
    assert ",Average across Methods," not in T.render(cmp, "csv")
    # Table 4 / 5 with no trials of their variant: all dashes, no crash, every format renders
    for n in (4, 5):
        t = T.TABLE_BUILDERS[n](T.check_trials(pd.DataFrame(rows)))
        assert np.isnan(t.dice.to_numpy()).all()
        for f in T.FORMATS:
            assert T.render(t, f) and T.render(t, f, counts=True) and T.render(T.compare(t), f)


def test_empty_trial_table_renders():
    empty = T.check_trials(pd.DataFrame(columns=list(T.REQUIRED_COLUMNS) + ["objective"]))
    table = T.table3(empty)
    assert "No trials for this table yet." in T.render(table, "md")
    assert np.isnan(table.average[0])


def test_extra_datasets_and_pairs_are_appended_not_dropped():
    rows = [trial(dataset="kvasir_mini"), trial(vlsm="cris", learner="vpt", dataset="kvasir")]
    table = T.table3(T.check_trials(pd.DataFrame(rows)))
    assert table.datasets[-1].key == "kvasir_mini" and table.datasets[-1].group == T.OTHER_GROUP
    assert table.rows[-1].labels == ("CRIS", "VPT")
    assert "*Other*" in T.render(table, "md")


def test_missing_columns_schema_version_and_non_parquet_are_clear_errors(tmp_path):
    df = pd.DataFrame([trial()])
    with pytest.raises(T.SchemaError, match="missing column.*test_dice.*tunevlseg run"):
        T.check_trials(df.drop(columns=["test_dice"]), "old.parquet")
    # objective only matters for the validation rule
    T.check_trials(df.drop(columns=["objective"]), by="test_dice")
    with pytest.raises(T.SchemaError, match="objective"):
        T.check_trials(df.drop(columns=["objective"]), by="objective")
    with pytest.raises(T.SchemaError, match=r"schema_version \[99\]"):
        T.check_trials(df.assign(schema_version=99))
    T.check_trials(df.assign(schema_version=max(T.supported_schema_versions())))
    (tmp_path / "trials").mkdir()
    bad = tmp_path / "trials" / "clipseg_coop_kvasir.parquet"
    bad.write_text("not parquet")
    with pytest.raises(T.SchemaError, match="cannot be read as Parquet"):
        T.read_trials(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such run directory or Parquet file"):
        T.read_trials(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no trials/\*.parquet"):
        T.read_trials(tmp_path / "empty")


def test_read_trials_dir_of_cell_files_specs_and_duplicates(tmp_path):
    a = pd.DataFrame([trial(trial_index=0, spec="mini"), trial(trial_index=1, spec="mini")])
    b = pd.DataFrame([trial(trial_index=1, spec="mini", test_dice=0.9), trial(dataset="busi", spec="mini")])
    (tmp_path / "trials").mkdir()
    a.to_parquet(tmp_path / "trials" / "clipseg_coop_kvasir.parquet")
    b.to_parquet(tmp_path / "trials" / "clipseg_coop_zzz.parquet")
    df = T.read_trials(tmp_path)
    assert len(df) == 3  # trial 1 of kvasir written twice: last write wins
    assert df.loc[(df.dataset == "kvasir") & (df.trial_index == 1), "test_dice"].item() == 0.9
    pd.concat([a, a.assign(spec="other")]).to_parquet(tmp_path / "trials" / "mixed.parquet")
    with pytest.raises(ConfigError, match=r"several specs \(mini, other\).*--spec"):
        T.read_trials(tmp_path)
    assert len(T.read_trials(tmp_path / "trials" / "mixed.parquet", spec="other")) == 2
    with pytest.raises(ConfigError, match="no trials of spec 'nope'"):
        T.read_trials(tmp_path, spec="nope")


def test_reads_the_run_layout_written_by_records(tmp_path):
    """The writer's layout: <run>/trials/<cell_id>.parquet with the pinned schema and its version in the
    Parquet metadata; selected.parquet is not mistaken for trials."""
    from datetime import datetime, timezone

    t0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    prov = {"git_sha": "feedbeef", "git_dirty": False, "versions": json.dumps({"torch": "2.13.0"})}
    for ds in ("kvasir", "busi"):
        cell = dict(vlsm="clipseg", learner="maple", dataset=ds, variant="default")
        rows = [R.trial_row(spec="mini", cell=cell, cell_id=f"clipseg_maple_{ds}", trial_index=i, trial_id=f"{ds}{i}",
                            hp={"lr": 1e-3, "prompt_depth": 3 + i, "use_lora": True},
                            result={"objective": 1.0 - i / 10, "test_dice": 0.5 + i / 10, "status": "ok"},
                            error=None, prov=prov, started_at=t0, finished_at=t0)
                for i in range(3)]
        R.write_rows(rows, RunDir(tmp_path).cell_file(f"clipseg_maple_{ds}"))
    R.write_rows([dict(rows[0], selected_by="min objective (reporting test_dice)", trials_done=3, trials_planned=3)],
                 RunDir(tmp_path).selected_file, schema=R.SELECTED_SCHEMA)
    df = T.read_trials(tmp_path)
    assert len(df) == 6
    table = T.table3(df)
    maple = [i for i, r in enumerate(table.rows) if r.learner == "maple"][0]
    assert T.fmt(table.dice.loc[maple, "kvasir"]) == "70.00" and table.n_trials.loc[maple, "busi"] == 3
    with pytest.raises(T.SchemaError, match="per-cell selection"):
        T.read_trials(RunDir(tmp_path).selected_file)
    import pyarrow.parquet as pq

    old = pq.read_table(RunDir(tmp_path).cell_file("clipseg_maple_busi"))
    pq.write_table(old.replace_schema_metadata({"tunevlseg.schema_version": "0"}), tmp_path / "old.parquet")
    with pytest.raises(T.SchemaError, match=r"schema_version \[0\].*reads \[1\]"):
        T.read_trials(tmp_path / "old.parquet")


# ---------------------------------------------------------------------------------------------------------
# Table 2 and renderers


def test_table2_from_params_and_every_prompt_learner_is_all():
    params = (Param("lr", "float", "train.lr", EVERY_PROMPT_LEARNER, 1e-5, 5e-3, log=True),
              Param("prompt_depth", "int", "x", tuple(LEARNERS.names()), 1, 11),
              Param("use_lora", "categorical", "x", ("maple", "cocoop"), choices=(True, False)),
              Param("dropout", "float", "x", ("shared_attention",), 0.1, 0.55))
    f = T.table2(params).frame()
    assert f.values.tolist() == [
        ["Learning rate", "[1e-5, 5e-3]", "ALL", "Log"],
        ["Prompt depth", "[1, 11]", "ALL", "Integer"],
        ["Use LORA", "{true, false}", "CoCoOp, Maple", "Choice"],
        ["Transformer: Dropout Probability", "[0.1, 0.55]", "Shared Attention", "Linear"]]
    assert "[$10^{-5}$, $5\\times10^{-3}$]" in T.render(T.table2(params), "tex")


def test_table2_from_search_space_module_matches_paper():
    t = T.table2()
    f = t.frame()
    # the paper's ten rows, then the rows of the learners beyond the paper (LoRA, VLSM-Adapter), marked
    assert len(f) == 14 and f.iloc[0].tolist() == ["Learning rate", "[1e-5, 5e-3]", "ALL", "Log"]
    assert f.iloc[2].tolist() == ["Prompt depth", "[1, 11]", "ALL", "Integer"]  # not LoRA's: it has no depth
    assert f.iloc[3].tolist() == ["Intermediate dimension", "{32, 64, 96, 128}", "CoCoOp, Maple", "Choice"]
    assert f.iloc[9].tolist() == ["Shared Space Dimension", "{32, 64}", "Shared Separate", "Choice"]
    assert f.iloc[10].tolist() == ["Adapter bottleneck", "{16, 32, 64, 128}", "VLSM-Adapter ‡", "Choice"]
    assert f.iloc[11].tolist() == ["LoRA rank", "{2, 4, 8, 16}", "LoRA ‡", "Choice"]
    note = [line for line in T.table2_grid(t).footnotes if "‡ beyond the paper" in line]
    assert note and "VLSM-Adapter ‡, LoRA ‡ are searched over Learning rate, Weight decay too" in note[0]


# How paper Table 2 prints its ten rows (the paper's text, "Use LORA" included).
PAPER_TABLE2_LABELS = ["Learning rate", "Weight decay", "Prompt depth", "Intermediate dimension", "Use LORA",
                       "Transformer: Number of Heads", "Transformer: Dropout Probability",
                       "Transformer: Feed-Forward Dim", "Transformer: LayerNorm First", "Shared Space Dimension"]


def test_table2_is_the_search_space_records_in_the_papers_order_with_their_labels():
    records = search_space.PAPER
    f = T.table2(tuple(reversed(records))).frame()  # any order in: the paper's out
    assert f["Hyperparameter"].tolist() == [p.label for p in records]
    assert f["Hyperparameter"].tolist()[:10] == PAPER_TABLE2_LABELS


@dataclass(frozen=True)
class _WidthConfig(PromptConfig):
    learner_name: ClassVar[str] = "my_wide"
    width: int = 8


def test_table2_row_of_a_learners_own_param_comes_from_its_registration():
    width = Param("width", "categorical", "model.learner_config.width", choices=(8, 16), label="Width")
    catalog.register_learner("my_wide", "My Wide", _WidthConfig, {TEXT}, model="nowhere:Model", search=(width,),
                             beyond_paper=True)
    try:
        f = T.table2().frame()
        names = f["Hyperparameter"].tolist()
        assert f.iloc[names.index("Width")].tolist() == ["Width", "{8, 16}", "My Wide ‡", "Choice"]
        assert names.index("Width") > names.index("Shared Space Dimension")  # after the paper's rows
        # a narrowed domain of it is named by its label in the footnote, like its row
        narrowed = (search_space.PAPER[0], dataclasses.replace(width, applies_to=("my_wide",), choices=(8,)))
        foot = T.table2_grid(T.table2(narrowed, mark_vs_paper=True)).footnotes
        assert foot[0] == "† differs from the paper's Table 2 (Width: {8, 16})."
    finally:
        LEARNERS.remove("my_wide")
    assert "Width" not in T.table2().frame()["Hyperparameter"].tolist()


def test_grid_aligns_each_column_as_told_and_an_untitled_grid_is_just_its_table():
    g = T.Grid("", [], ["Model"], [], ["Variant", "N"], [(["CLIPSeg"], ["default", "3"])], align="lr")
    assert T.grid_md(g) == "| Model | Variant | N |\n|:---|:---|---:|\n| CLIPSeg | default | 3 |\n"
    assert "\\begin{tabular}{llr}" in T.grid_tex(g)


def test_tex_and_csv_layouts():
    table = T.table3(T.check_trials(paper_as_trials(3)))
    tex = T.render(table, "tex")
    assert "\\multicolumn{5}{c}{Non-Radiology}" in tex and "\\multicolumn{3}{c}{Radiology}" in tex
    assert "79.63 $\\pm$ 12.67" in tex and tex.count("\\midrule") == 2
    header = T.render(table, "csv").splitlines()[0]
    assert header.startswith((PAPER / "table3.csv").read_text().splitlines()[0].removesuffix(",mean,std"))
    with pytest.raises(ValueError, match="allowed: md, csv, tex"):
        T.render(table, "html")


# ---------------------------------------------------------------------------------------------------------
# The command: files, report, determinism, and no torch on the path


def _write_run(path: Path) -> Path:
    rng = np.random.default_rng(1)
    rows = []
    for v, l in [("clipseg", "coop"), ("clipseg", "vpt"), ("cris", "coop")]:
        for d in ("kvasir", "busi"):
            for i in range(4):
                rows.append(trial(vlsm=v, learner=l, dataset=d, trial_index=i, test_dice=rng.uniform(.3, .9),
                                  objective=rng.uniform(.1, 1), hp_prompt_depth=int(rng.integers(1, 12)),
                                  hp_lr=10 ** rng.uniform(-5, -2.3), hp_weight_decay=10 ** rng.uniform(-5, -2)))
    rows.append(trial(variant="no_upsampler", test_dice=0.4, hp_prompt_depth=3, hp_lr=1e-3, hp_weight_decay=1e-3))
    df = pd.DataFrame(rows).assign(spec="mini", schema_version=max(T.supported_schema_versions()),
                                   git_sha="0123456789abcdef", git_dirty=False, gpu_name="cpu",
                                   versions=json.dumps({"torch": "2.13.0", "ray": "2.60.0"}),
                                   started_at="2025-01-02T03:04:05Z", finished_at="2025-01-02T04:00:00Z",
                                   seconds=30.0, error="")
    (path / "trials").mkdir(parents=True, exist_ok=True)
    df.to_parquet(path / "trials" / "mini.parquet")
    return path


_CLI = """
import sys
from benchmark import cli
rc = cli.main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "ray", "transformers") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(rc)
"""


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _CLI, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_cli_writes_tables_figures_report_without_torch_and_is_deterministic(tmp_path):
    run = _write_run(tmp_path / "run")
    outs = []
    for name in ("a", "b"):
        p = _cli("tables", str(run), "--out", str(tmp_path / name), "--vs-paper", "--format", "all")
        assert p.returncode == 0, p.stderr
        assert "HEAVY=\n" in p.stderr + "\n", p.stderr  # neither torch nor ray nor transformers imported
        assert "skipped Table 4 (no trials with variant 'gaussian_init')" in p.stderr
        outs.append(tmp_path / name)
    a, b = outs
    names = sorted(f.name for f in a.iterdir())
    for expected in ("table2.md", "table3.csv", "table3.tex", "table3_trials.md", "table3_vs_paper.csv",
                     "table5.md", "dice_vs_prompt_depth.png", "table3_heatmap.png", "report.md"):
        assert expected in names
    assert "table4.md" not in names
    for f in names:
        assert (a / f).read_bytes() == (b / f).read_bytes() or f == "report.md", f
    ra, rb = (a / "report.md").read_text(), (b / "report.md").read_text()
    assert ra.replace(str(a), "OUT") == rb.replace(str(b), "OUT")
    assert "`0123456789abcdef`" in ra and "ray 2.60.0, torch 2.13.0" in ra and "ok 25" in ra
    assert "![dice vs prompt depth](dice_vs_prompt_depth.png)" in ra and "## Table 5" in ra
    assert f"tunevlseg tables {run} --format all --out {a} --vs-paper" in ra


def test_cli_prints_what_it_writes_in_the_layouts_order(tmp_path):
    run = _write_run(tmp_path / "run")
    printed = _cli("tables", str(run), "--vs-paper")
    wrote = _cli("tables", str(run), "--vs-paper", "--out", str(tmp_path / "out"), "--no-figures", "--no-mlflow")
    assert printed.returncode == 0 and wrote.returncode == 0, printed.stderr + wrote.stderr
    names = ["table2", "table3", "table3_trials", "table3_vs_paper", "table5", "table5_trials", "table5_vs_paper"]
    assert printed.stdout == "\n".join((tmp_path / "out" / f"{n}.md").read_text() for n in names)


def test_cli_prints_to_stdout_and_reports_bad_input_in_one_line(tmp_path):
    run = _write_run(tmp_path / "run")
    p = _cli("tables", str(run / "trials" / "mini.parquet"), "--selection", "best_test", "--format", "csv")
    assert p.returncode == 0, p.stderr
    assert "table,vlsm,learner,BKAI" in p.stdout and ",best_test" in p.stdout
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "other.parquet")
    p = _cli("tables", str(tmp_path / "other.parquet"))
    assert p.returncode == 2
    err = [l for l in p.stderr.splitlines() if not l.startswith("HEAVY=")]
    assert len(err) == 1 and "tunevlseg tables: error:" in err[0] and "missing column" in err[0]
