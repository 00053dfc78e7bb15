"""The search space (paper Table 2 as data), its Optuna rendering and the per-cell searcher."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import ClassVar

import optuna
import pytest

from benchmark import cli
from benchmark.plan import search_space
from benchmark.plan.search_space import PAPER, Param, params_for
from trainables import catalog
from trainables.catalog import LEARNERS, TEXT
from trainables.learners.config import PromptConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _names(learner, space="paper"):
    return [p.name for p in params_for(learner, space)]


def test_table2_exactly():
    by = {p.name: p for p in PAPER}
    assert (by["lr"].low, by["lr"].high, by["lr"].log) == (1e-5, 5e-3, True)
    assert (by["weight_decay"].low, by["weight_decay"].high, by["weight_decay"].log) == (1e-5, 1e-2, True)
    assert (by["prompt_depth"].kind, by["prompt_depth"].low, by["prompt_depth"].high) == ("int", 1, 11)
    assert by["intermediate_dim"].choices == (32, 64, 96, 128)
    assert by["use_lora"].choices == (True, False)
    assert by["nhead"].choices == (16, 20, 32) and by["dim_feedforward"].choices == (1280, 1420)
    assert (by["dropout"].low, by["dropout"].high, by["dropout"].log) == (0.1, 0.55, False)
    assert by["norm_first"].choices == (True, False) and by["shared_dim"].choices == (32, 64)
    common = ["lr", "weight_decay", "prompt_depth"]
    assert _names("coop") == _names("vpt") == common
    assert _names("cocoop") == _names("maple") == common + ["intermediate_dim", "use_lora"]
    assert _names("shared_attention") == common + ["nhead", "dropout", "dim_feedforward", "norm_first"]
    assert _names("shared_separate") == common + ["shared_dim"]
    assert _names("e2e") == []
    assert by["prompt_depth"].target == "model.learner_config.prompt_depth" and by["lr"].target == "train.lr"


# Paper Table 2 written out as one literal, as this module held it before the learner-specific rows moved into
# the learners' folders: the space gathered from the catalog must be this, record for record, in this order.
_LC, _PROJ, _SA = "model.learner_config.", ("cocoop", "maple"), ("shared_attention",)
TABLE2 = (
    Param("lr", "float", "train.lr", ("*",), 1e-5, 5e-3, log=True, label="Learning rate"),
    Param("weight_decay", "float", "train.weight_decay", ("*",), 1e-5, 1e-2, log=True, label="Weight decay"),
    Param("prompt_depth", "int", _LC + "prompt_depth", ("*",), 1, 11, label="Prompt depth"),
    Param("intermediate_dim", "categorical", _LC + "intermediate_dim", _PROJ, choices=(32, 64, 96, 128),
          label="Intermediate dimension"),
    Param("use_lora", "categorical", _LC + "use_lora", _PROJ, choices=(True, False), label="Use LORA"),
    Param("nhead", "categorical", _LC + "nhead", _SA, choices=(16, 20, 32), label="Transformer: Number of Heads"),
    Param("dropout", "float", _LC + "dropout", _SA, 0.1, 0.55, label="Transformer: Dropout Probability"),
    Param("dim_feedforward", "categorical", _LC + "dim_feedforward", _SA, choices=(1280, 1420),
          label="Transformer: Feed-Forward Dim"),
    Param("norm_first", "categorical", _LC + "norm_first", _SA, choices=(True, False), label="Transformer: LayerNorm First"),
    Param("shared_dim", "categorical", _LC + "shared_dim", ("shared_separate",), choices=(32, 64),
          label="Shared Space Dimension"),
)
# The rows of the learners beyond the paper (LoRA, VLSM-Adapter), declared in their folders: after the paper's.
BEYOND = (
    Param("adapter_bottleneck", "categorical", _LC + "bottleneck", ("adapter",), choices=(16, 32, 64, 128),
          label="Adapter bottleneck"),
    Param("lora_rank", "categorical", _LC + "rank", ("lora",), choices=(2, 4, 8, 16), label="LoRA rank"),
    Param("lora_alpha", "categorical", _LC + "alpha", ("lora",), choices=(1, 2, 4, 8, 16), label="LoRA alpha"),
    Param("lora_dropout", "float", _LC + "dropout", ("lora",), 0.0, 0.5, label="LoRA dropout"),
)
REFERENCE = TABLE2[:3] + (
    Param("intermediate_dim", "categorical", _LC + "intermediate_dim", ("cocoop",), choices=(32, 129, 32),
          label="Intermediate dimension"),
    Param("intermediate_dim", "categorical", _LC + "intermediate_dim", ("maple",), choices=(32, 64, 96),
          label="Intermediate dimension"),
) + TABLE2[4:]


def _tpe_sequence(params, seed, n=14):
    study = optuna.create_study(sampler=search_space.make_sampler(seed))
    out = []
    for i in range(n):  # past the 10 random start-up trials, into TPE proper
        trial = study.ask()
        search_space.define_by_run(trial, params)
        out.append(trial.params)
        study.tell(trial, (i % 5) / (i + 1))
    return out


def test_gathered_space_is_table2_record_for_record_and_samples_alike():
    assert search_space.SPACES["paper"] == PAPER == TABLE2 + BEYOND
    assert search_space.SPACES["reference"] == REFERENCE + BEYOND
    assert search_space.HP_NAMES == tuple(dict.fromkeys(p.name for p in TABLE2 + BEYOND))
    # the shared rows' learners resolve through the catalog; prompt depth only where the config has it
    assert {"lora", "adapter"} <= set(PAPER[0].learners()) and not {"lora", "adapter"} & set(PAPER[2].learners())
    for learner in ("cocoop", "shared_attention", "shared_separate"):
        literal = tuple(p for p in TABLE2 if learner in p.learners())
        assert params_for(learner) == literal
        seed = search_space.seed_for(learner)
        assert _tpe_sequence(params_for(learner), seed) == _tpe_sequence(literal, seed)
    assert params_for("maple", "reference") == tuple(p for p in REFERENCE if "maple" in p.learners())


@dataclass(frozen=True)
class _WidthConfig(PromptConfig):
    learner_name: ClassVar[str] = "my_wide"
    width: int = 8


def test_a_learner_declares_its_own_rows_in_its_registration():
    catalog.register_learner("my_wide", "My Wide", _WidthConfig, {TEXT}, model="nowhere:Model", search=(
        Param("width", "categorical", "model.learner_config.width", choices=(8, 16), label="Width"),
        Param("use_lora", "categorical", "model.learner_config.use_lora", choices=(True, False), label="Use LORA")))
    try:
        assert _names("my_wide") == ["lr", "weight_decay", "prompt_depth", "width", "use_lora"]
        by = {p.name: p for p in search_space.PAPER}  # read now: gathered from the catalog as it is
        assert by["use_lora"].applies_to == ("cocoop", "maple", "my_wide")  # declared alike: one Table 2 row
        assert by["width"].applies_to == ("my_wide",) and "width" in search_space.HP_NAMES
    finally:
        LEARNERS.remove("my_wide")
    assert "width" not in search_space.HP_NAMES
    with pytest.raises(ValueError, match="learner 'my_other'.*'width' names \\('coop',\\)"):
        catalog.register_learner("my_other", "Other", _WidthConfig, {TEXT}, model=None,
                                 search=(Param("width", "int", "x", ("coop",), 1, 2),))
    assert "my_other" not in LEARNERS


def test_reference_space_keeps_the_original_drift():
    cocoop = {p.name: p for p in params_for("cocoop", "reference")}
    maple = {p.name: p for p in params_for("maple", "reference")}
    assert cocoop["intermediate_dim"].choices == (32, 129, 32)  # 32 listed twice, as the original
    assert maple["intermediate_dim"].choices == (32, 64, 96)
    assert [p.name for p in params_for("shared_attention", "reference")] == _names("shared_attention")


def test_seeds_and_tpe_settings_of_the_original():
    seeds = {name: search_space.seed_for(name) for name in LEARNERS.names() if params_for(name)}
    assert seeds == {"coop": 12345, "cocoop": 1234, "vpt": 1234, "maple": 12345,
                     "shared_attention": 123456, "shared_separate": 4322, "lora": 1234, "adapter": 1234}
    tpe = search_space.ORIGINAL_TPE
    assert (tpe.n_startup_trials, tpe.multivariate) == (10, True)
    sampler = search_space.make_sampler(12345)
    assert sampler._n_startup_trials == 10 and sampler._multivariate


def test_define_by_run_samples_inside_the_bounds_inclusive_of_depth_11():
    params = params_for("shared_attention")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    depths = set()
    for _ in range(300):
        trial = study.ask()
        search_space.define_by_run(trial, params)
        for p in params:
            assert p.contains(trial.params[p.name]), (p.name, trial.params[p.name])
        depths.add(trial.params["prompt_depth"])
        study.tell(trial, 0.0)
    # Ray's tune.randint(1, 11) would never give 11; suggest_int is inclusive.
    assert depths == set(range(1, 12))
    lrs = [t.params["lr"] for t in study.trials]
    assert min(lrs) >= 1e-5 and max(lrs) <= 5e-3
    # log-uniform: about as many draws below the geometric midpoint as above
    mid = math.sqrt(1e-5 * 5e-3)
    assert 100 < sum(lr < mid for lr in lrs) < 200


def test_apply_values_writes_target_paths():
    cfg = {"model": {"learner": "maple"}, "train": {"max_epochs": 20}}
    out = search_space.apply_values(cfg, params_for("maple"), {"lr": 1e-3, "prompt_depth": 9, "use_lora": True})
    assert out == {"model": {"learner": "maple", "learner_config": {"prompt_depth": 9, "use_lora": True}},
                   "train": {"max_epochs": 20, "lr": 1e-3}}


def test_domains_render_like_table2():
    by = {p.name: p.domain() for p in PAPER}
    assert by["lr"] == "[1e-5, 5e-3] log-uniform"
    assert by["prompt_depth"] == "[1, 11] integer"
    assert by["intermediate_dim"] == "{32, 64, 96, 128}" and by["use_lora"] == "{true, false}"


def test_space_command(capsys):
    assert cli.main(["space", "maple", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in data["params"]] == _names("maple") and data["sampler"]["seed"] == 12345
    assert cli.main(["space", "cocoop", "--space", "reference"]) == 0
    assert "{32, 129, 32}" in capsys.readouterr().out
    assert cli.main(["space", "mapel"]) == 2
    assert "unknown learner 'mapel'" in capsys.readouterr().err


# ---- the per-cell searcher, without Ray's controller --------------------------------------------------


def _cells(trials=4):
    from benchmark.plan.matrix import build_plan
    from benchmark.plan.spec import spec_from_dict

    spec = spec_from_dict({"axes": {"vlsm": ["clipseg"], "learner": ["coop", "maple", "e2e"], "dataset": ["kvasir"]},
                           "search": {"trials": trials, "n_startup_trials": 2}})
    return build_plan(spec).cells


def test_multicell_searcher_gives_each_cell_exactly_its_trials(tmp_path):
    from ray.tune.search import Searcher

    from benchmark.sweep.searcher import MultiCellSearcher

    cells = _cells()
    searcher = MultiCellSearcher(cells, metric="objective", mode="min")
    configs = {}
    for i in range(9):
        cfg = searcher.suggest(f"t{i}")
        assert cfg not in (None, Searcher.FINISHED)
        configs[f"t{i}"] = cfg
        searcher.on_trial_complete(f"t{i}", {"objective": 1.0 / (i + 1), "status": "ok"})
        if i == 4:  # snapshot mid-sweep, as Tune does
            searcher.save(str(tmp_path / "state.pkl"))
    assert searcher.suggest("t9") == Searcher.FINISHED
    per_cell = {}
    for cfg in configs.values():
        per_cell.setdefault(cfg["cell_id"], []).append(cfg["trial_index"])
    assert per_cell == {"clipseg_coop_kvasir": [0, 1, 2, 3], "clipseg_maple_kvasir": [0, 1, 2, 3],
                        "clipseg_e2e_kvasir": [0]}
    maple = [c for c in configs.values() if c["cell_id"] == "clipseg_maple_kvasir"]
    for cfg in maple:  # sampled values land in the nested trial config at their targets
        assert cfg["trial"]["train"]["lr"] == cfg["hp"]["lr"]
        assert cfg["trial"]["model"]["learner_config"]["intermediate_dim"] == cfg["hp"]["intermediate_dim"]
    e2e = next(c for c in configs.values() if c["cell_id"] == "clipseg_e2e_kvasir")
    assert e2e["hp"] == {} and "lr" not in e2e["trial"]["train"]
    assert len(searcher.study("clipseg_maple_kvasir").trials) == 4 and searcher.study("clipseg_e2e_kvasir") is None

    # Restoring the snapshot continues the same studies: the re-suggested trials have the same params.
    restored = MultiCellSearcher.__new__(MultiCellSearcher)
    restored.restore(str(tmp_path / "state.pkl"))
    again = restored.suggest("t5-new")
    assert again["cell_id"] == configs["t5"]["cell_id"] and again["hp"] == configs["t5"]["hp"]


def test_multicell_searcher_failures_and_concurrency():
    from benchmark.sweep.searcher import MultiCellSearcher

    searcher = MultiCellSearcher(_cells(trials=3)[:1], metric="objective", mode="min", max_concurrent_per_cell=2)
    a, b = searcher.suggest("a"), searcher.suggest("b")
    assert a and b and searcher.suggest("c") is None  # the cell's two slots are busy
    # An errored trial is FAIL even though it reported objective=inf before raising.
    searcher.on_trial_complete("a", {"objective": float("inf"), "status": "error"}, error=True)
    searcher.on_trial_complete("b", {"objective": float("inf"), "status": "diverged"})
    states = [t.state.name for t in searcher.study(a["cell_id"]).trials]
    assert states == ["FAIL", "COMPLETE"] and searcher.study(a["cell_id"]).trials[1].value == math.inf


def test_restore_settles_trials_that_finished_after_the_snapshot(tmp_path):
    # Tune writes its experiment state, then the searcher snapshot: a driver killed in between restores
    # trials Tune knows are finished into a snapshot that still has them open. The Parquet rows settle them.
    from benchmark.results import records
    from benchmark.results.run_dir import RunDir
    from benchmark.sweep.searcher import MultiCellSearcher

    cells = _cells()[1:2]  # the MaPLe cell
    cid = cells[0].id
    searcher = MultiCellSearcher(cells, metric="objective", mode="min", run_dir=str(tmp_path))
    configs = {t: searcher.suggest(t) for t in ("a", "b", "c", "d")}
    searcher.on_trial_complete("a", {"objective": 0.5, "status": "ok"})
    searcher.save(str(tmp_path / "state.pkl"))  # b, c, d still running in this snapshot
    cell = {k: getattr(cells[0], k) for k in ("vlsm", "learner", "dataset", "variant")}
    rows = [records.trial_row(spec="s", cell=cell, cell_id=cid, trial_index=configs[t]["trial_index"], trial_id=t,
                              hp=configs[t]["hp"], result=result, error=error, prov={}, started_at=None,
                              finished_at=None)
            for t, result, error in (("a", {"objective": 0.5}, None), ("b", {"objective": 0.25}, None),
                                     ("c", {"objective": float("inf")}, "worker died"))]
    records.write_rows(rows, RunDir(tmp_path).cell_file(cid))

    restored = MultiCellSearcher.__new__(MultiCellSearcher)
    restored.restore(str(tmp_path / "state.pkl"))
    states = {t.number: (t.state.name, t.value) for t in restored.study(cid).trials}
    assert states == {0: ("COMPLETE", 0.5), 1: ("COMPLETE", 0.25), 2: ("FAIL", None), 3: ("RUNNING", None)}
    assert restored.live[cid] == {"d"}  # d has no row: Tune reruns it and reports it as usual
