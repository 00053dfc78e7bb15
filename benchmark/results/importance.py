"""Which hyperparameters matter: per (learner, dataset) cell, Optuna's fANOVA importances of its study.

The study: the cell's own Optuna study in the run's storage (`RUN/optuna.db`, written by
benchmark/sweep/studies.py, named by cell id) when the run has one; otherwise rebuilt from the Parquet rows
(hp_* columns, the objective) with `optuna.create_study` + `add_trials`, over the domains the run searched
(RUN/plan.json, else the paper's space). The `source` column says which. Both hold the same finished trials and the same objective.

The evaluator is fANOVA (`optuna.importance.FanovaImportanceEvaluator`, Hutter et al. 2014), with a fixed
seed so the numbers regenerate: it decomposes the variance of the objective over the whole searched space
into each parameter's share, which answers "which parameter moves the result". PED-ANOVA, Optuna's other
fast evaluator, asks which parameters separate the top quantile (default 10%) of trials from the rest: with
the paper's 20 trials per cell that quantile is two trials, too few to rest a reading on. Importances are
normalised to sum to 1 per cell.

A random forest on a handful of points says nothing, so cells with fewer than `MIN_TRIALS` finished trials,
or fewer than two parameters that took more than one value, are marked in the table (status column) and left
out of the heatmap, never guessed. The importances concern the objective the search minimised (validation
loss by default), not the test Dice.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from benchmark.plan.spec import Selection
from benchmark.results import selection as sel
from benchmark.results import tables as T
from benchmark.results.tables.grid import Grid, grid_md
from trainables.protocol import STATUS_OK

CSV = "importance.csv"
FIGURE = "importance_heatmap.png"
MIN_TRIALS = 5
SEED = 0
COLUMNS = [*sel.CELL_KEYS, "source", "trials", "status", "param", "importance"]


def distribution(p) -> Any:
    """The Optuna distribution of a `benchmark.plan.search_space.Param`."""
    import optuna.distributions as D

    if p.kind == "float":
        return D.FloatDistribution(float(p.low), float(p.high), log=bool(p.log))
    if p.kind == "int":
        return D.IntDistribution(int(p.low), int(p.high), log=bool(p.log))
    return D.CategoricalDistribution(list(p.choices or ()))


def _value(v: Any, p) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return None
    if p.kind == "float":
        return float(v)
    if p.kind == "int":
        return int(v)
    for c in p.choices or ():  # a categorical value as the choice itself (bool stays bool, 64 stays int)
        if c == v and type(c) is type(v.item() if hasattr(v, "item") else v):
            return c
    return next((c for c in p.choices or () if c == v), None)


def rebuild_study(cell: pd.DataFrame, params: Sequence, rule: Selection):
    """An in-memory Optuna study of the cell's finished search trials: their hp_* values and `rule.by`."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if rule.mode == "min" else "maximize")
    dists = {p.name: distribution(p) for p in params}
    trials = []
    for r in cell.to_dict("records"):
        value = r.get(rule.by)
        if r.get("status") != STATUS_OK or value is None or not np.isfinite(float(value)):
            continue
        values = {p.name: _value(r.get(f"hp_{p.name}"), p) for p in params}
        if any(v is None for v in values.values()):
            continue
        trials.append(optuna.trial.create_trial(params=values, distributions=dists, value=float(value)))
    study.add_trials(trials)
    return study


def _params_for(learner: str, searched) -> tuple:
    from benchmark.plan import search_space as SS

    if searched is not None:
        return tuple(p for p in searched if learner in p.applies_to or p.applies_to == SS.EVERY_PROMPT_LEARNER)
    return SS.params_for(learner)


def stored_studies(run: str | Path) -> dict[str, Any]:
    """{cell id: optuna.Study} from the run's default storage RUN/optuna.db ({} without one). Read with
    optuna alone, not through benchmark.sweep.studies, which imports Ray: the tables stay torch- and Ray-free.
    A run swept into another storage (`--optuna-storage URL`) is rebuilt from its Parquet rows instead."""
    import optuna

    from benchmark.results.run_dir import RunDir

    db = RunDir(run).optuna_db
    if not db.is_file():
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # One RDBStorage (one engine) for every study: given the URL, each call opened its own and re-checked
    # the schema with alembic, ~0.05 s a study (about 2 of the ~15 s of `tables` on the mini run's 39
    # studies). Each study still gets its own trial cache, as with the URL (load_study wraps an RDBStorage
    # in a _CachedStorage).
    storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}


def cell_importance(study, min_trials: int = MIN_TRIALS) -> tuple[str, dict[str, float]]:
    """(status, {param: importance}) of one study: "ok" with importances summing to 1, or why not."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < min_trials:
        return f"too few trials ({len(done)} finished < {min_trials})", {}
    varying = [k for k in {k for t in done for k in t.params}
               if len({repr(t.params.get(k)) for t in done}) > 1]
    if len(varying) < 2:
        return f"fewer than 2 varying parameters ({len(varying)})", {}
    try:
        import sklearn  # noqa: F401  (Optuna's fANOVA fits scikit-learn's random forest)
    except ImportError:
        return "not estimated: scikit-learn is not installed (pip install scikit-learn)", {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=SEED)
    imp = optuna.importance.get_param_importances(study, evaluator=evaluator, params=sorted(varying),
                                                  normalize=True)
    total = sum(imp.values())
    if not total or not math.isfinite(total):  # a flat objective: no share to give
        return "objective constant over the trials", {}
    return "ok", {k: float(v) / total for k, v in imp.items()}


def table(trials: pd.DataFrame, rule: Selection, run: str | Path | None = None,
          min_trials: int = MIN_TRIALS) -> pd.DataFrame:
    """importance.csv: one row per (cell, parameter); a marked cell has one row with its status."""
    searched, studies = None, {}
    if run is not None and Path(run).is_dir():
        searched = T.searched_space(run)
        studies = stored_studies(run)
    rows = []
    for key, cell in sel.search_only(trials).groupby(sel.CELL_KEYS, sort=True, dropna=False):
        base = dict(zip(sel.CELL_KEYS, key))
        params = _params_for(base["learner"], searched)
        if not params:
            continue  # not searched (E2E)
        cell_id = str(cell["cell_id"].iloc[0]) if "cell_id" in cell else ""
        if cell_id in studies:
            study, source = studies[cell_id], "optuna.db"
        else:
            study, source = rebuild_study(cell, params, rule), "rebuilt from Parquet"
        status, imp = cell_importance(study, min_trials)
        import optuna

        n = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        head = {**base, "source": source, "trials": n, "status": status}
        if imp:
            rows += [{**head, "param": k, "importance": v} for k, v in sorted(imp.items(), key=lambda kv: -kv[1])]
        else:
            rows.append({**head, "param": "", "importance": np.nan})
    return pd.DataFrame(rows, columns=COLUMNS)


def report_lines(imp: pd.DataFrame, figure: str | None, min_trials: int = MIN_TRIALS) -> list[str]:
    lines = ["## Hyperparameter importance", "",
             "Per cell, Optuna's fANOVA importance (seed 0) of each searched hyperparameter for the objective "
             "the search minimised, normalised to sum to 1; fANOVA because it apportions the objective's "
             "variance over the whole space, where PED-ANOVA would rest on the top 10% of trials. Cells with "
             f"fewer than {min_trials} finished trials or fewer than 2 varying parameters are marked, not "
             f"estimated. Per cell and parameter in `{CSV}`.", ""]
    if imp.empty:
        return lines + ["*No searched cell.*", ""]
    cells = imp.drop_duplicates(sel.CELL_KEYS)
    marked = cells[cells["status"] != "ok"]
    sources = ", ".join(f"{s} ({n} cells)" for s, n in cells["source"].value_counts().items())
    lines += [f"Studies: {sources}. Estimated for {len(cells) - len(marked)} of {len(cells)} cells."]
    if len(marked):
        lines += ["Marked: " + "; ".join(f"{s} ({n} cells)" for s, n in marked["status"].value_counts().items())
                  + "."]
    lines.append("")
    ok = imp[imp["status"] == "ok"]
    if len(ok):
        top = ok.sort_values("importance", ascending=False).drop_duplicates(sel.CELL_KEYS)
        body = [([T.vlsm_name(r.vlsm), T.learner_name(r.learner)],
                 [r.dataset, r.variant, str(r.trials), r.param, f"{r.importance:.2f}"])
                for r in top.sort_values(sel.CELL_KEYS).itertuples(index=False)]
        grid = Grid("", [], ["Model", "Context Learner"], [], ["Dataset", "Variant", "Trials", "Most important",
                    "Share"], body, align="llrlr")
        lines += grid_md(grid).splitlines() + [""]
    if figure:
        lines += [f"![hyperparameter importance]({figure})", ""]
    return lines


def figure(imp: pd.DataFrame, path: str | Path) -> Path | None:
    """Heatmap: rows = estimated cells (VLSM · learner · dataset [· variant]), columns = parameters."""
    from matplotlib.figure import Figure

    ok = imp[imp["status"] == "ok"]
    if ok.empty:
        return None
    label = ok.apply(lambda r: " · ".join([T.vlsm_name(r.vlsm), T.learner_name(r.learner), r.dataset]
                                          + ([r.variant] if r.variant != "default" else [])), axis=1)
    grid = ok.assign(row=label).pivot_table(index="row", columns="param", values="importance", sort=True)
    fig = Figure(figsize=(1.2 + 0.9 * grid.shape[1] + 2.6, 2.0 + 0.32 * grid.shape[0]), dpi=130,
                 layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=8)
    for (i, j), v in np.ndenumerate(grid.to_numpy(dtype=float)):
        ax.text(j, i, "" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                color="white" if v < 0.6 else "black")
    fig.colorbar(im, ax=ax, label="fANOVA importance")
    ax.set_title("Hyperparameter importance per cell (each row sums to 1; blank: not searched for that learner)",
                 fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def findings(imp: pd.DataFrame) -> list[str]:
    """How many cells have an importance estimate, and the parameter most often most important."""
    if imp.empty:
        return []
    cells = imp.drop_duplicates(sel.CELL_KEYS)
    ok = imp[imp["status"] == "ok"]
    if ok.empty:
        return [f"- Hyperparameter importance: not estimated for any of the {len(cells)} searched cells (each has "
                f"fewer than {MIN_TRIALS} finished trials or fewer than 2 varying parameters); this run says "
                "nothing about which hyperparameters matter."]
    top = ok.sort_values("importance", ascending=False).drop_duplicates(sel.CELL_KEYS)["param"].value_counts()
    return [f"- Hyperparameter importance (fANOVA, descriptive, {top.sum()} of {len(cells)} cells estimated): the "
            "most important parameter is " + ", ".join(f"{k} in {v} cell(s)" for k, v in top.items()) + "."]


def write(trials: pd.DataFrame, rule: Selection, out_dir: str | Path, run: str | Path | None,
          figures: bool = True) -> tuple[list[str], list[Path], pd.DataFrame]:
    out_dir = Path(out_dir)
    imp = table(trials, rule, run)
    (out_dir / CSV).write_text(imp.to_csv(index=False, float_format="%.6g"), encoding="utf-8")
    written = [out_dir / CSV]
    fig = figure(imp, out_dir / FIGURE) if figures else None
    if fig is not None:
        written.append(fig)
    return report_lines(imp, fig.name if fig else None), written, imp
