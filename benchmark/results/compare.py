"""Did a run reproduce a reference run of the same spec? Trial by trial, cell by cell, and in ranking.

`tunevlseg compare RUN REF` (benchmark/commands/compare.py) prints what `compare_runs` finds. Torch-free.

Trial identity: a search trial is (cell, trial index); a rerun over seeds is (cell, trial index, k). Tune's
trial ids differ between runs and play no part.

Within noise. Two runs of one spec on different CPUs differ by rounding in the SIMD kernels, which training
amplifies; a cell's selected test Dice then moves by an amount no fixed threshold describes. What a reader
can accept is the cell's own variability, measured in REF (the reference, e.g. the committed results/mini):

    sigma(cell) = max( std of the test Dice over the cell's finished search trials (sample std, ddof 1),
                       std over seeds of its selected configuration, where REF reran it (select.reseed) )

A cell with one trial and no reruns (E2E: nothing is searched) gets the median sigma of REF's other
cells. The selected test Dice of each cell is compared as the difference of two draws, each with std sigma:

    |delta| <= Z * sqrt(2) * sigma(cell)        (Z = 2 by default: ~95% of pure-noise differences pass)

Every cell within its tolerance: the runs agree within noise (exit 0). Any cell beyond: they differ (exit 1),
and the cells are named. The trial-level figures (identical trials, same hyperparameters, |delta| of
matched trials) and the rank agreement (Kendall's tau-b of Table 3's rows by mean Dice) are reported beside
the verdict: they say how far from bit-identical the runs are, not whether the results are the same.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.results import selection as sel
from benchmark.results import tables as T
from benchmark.results.run_dir import RunDir
from trainables.config import ConfigError
from trainables.protocol import STATUS_OK

Z_DEFAULT = 2.0
_SQRT2 = math.sqrt(2.0)


@dataclass
class CellDelta:
    cell: str
    run: float  # selected test Dice (%) in RUN; NaN when the cell has no selected trial there
    ref: float
    sigma: float  # REF's spread of the cell (Dice points)
    sigma_from: str  # "trials", "seeds" or "median of cells"
    tolerance: float
    same_trial: bool = True  # both runs selected the same trial index

    @property
    def delta(self) -> float:
        return abs(self.run - self.ref)

    @property
    def beyond(self) -> bool:
        if math.isnan(self.run) != math.isnan(self.ref):
            return True  # selected in one run only
        return not math.isnan(self.run) and self.delta > self.tolerance


@dataclass
class Comparison:
    run: str
    ref: str
    z: float
    trials_matched: int
    trials_total: int  # union of both runs' trial identities
    identical: int  # same status, objective and test Dice, bit for bit
    same_hp: int
    trial_deltas: list[float]  # |delta test Dice| (points) of matched trials with a test Dice in both
    cells: list[CellDelta] = field(default_factory=list)
    tau: float = math.nan  # Kendall tau-b of Table 3's rows by mean Dice
    tau_rows: int = 0

    @property
    def beyond(self) -> list[CellDelta]:
        return [c for c in self.cells if c.beyond]

    @property
    def agree(self) -> bool:
        return not self.beyond

    def verdict(self) -> str:
        if self.identical == self.trials_total:
            return f"verdict: IDENTICAL: all {self.trials_total} trials bit-identical to the reference"
        if self.agree:
            return (f"verdict: AGREE within noise: every one of {len(self.cells)} cells' selected test Dice is within "
                    f"{self.z:g}*sqrt(2)*sigma of the reference ({self.identical}/{self.trials_total} trials "
                    "bit-identical)")
        names = ", ".join(f"{c.cell} ({_pt(c.delta)} > {_pt(c.tolerance)})" for c in self.beyond)
        return f"verdict: DIFFER: {len(self.beyond)} of {len(self.cells)} cells beyond noise: {names}"


def _pt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def _load(path: str | Path, what: str) -> tuple[RunDir, dict[str, Any], pd.DataFrame]:
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{what} {path}: not a run directory; pass the directory `tunevlseg run` wrote "
                          "(<storage>/<spec>, holding plan.json and trials/)")
    rd = RunDir(p)
    if not rd.plan_file.is_file():
        raise ConfigError(f"{what} {path}: no plan.json, so which spec it ran cannot be told; pass a run directory "
                          "written by `tunevlseg run`")
    try:
        plan = json.loads(rd.plan_file.read_text())
    except ValueError as e:
        raise ConfigError(f"{what} {rd.plan_file}: not JSON ({e}); restore it from the run's copy") from None
    trials = T.read_trials(p, by=rd.selection().by)
    return rd, plan, trials


def _key(row: dict[str, Any]) -> tuple[str, int, int]:
    reseed = row.get("reseed")
    k = int(reseed) if reseed is not None and not pd.isna(reseed) else 0
    return (str(row["cell_id"]), int(row["trial_index"]), k)


def _same(a: Any, b: Any) -> bool:
    na, nb = a is None or (isinstance(a, float) and math.isnan(a)), b is None or (isinstance(b, float) and math.isnan(b))
    if na or nb:
        return na and nb
    return a == b


def _cell_name(key: tuple) -> str:
    vlsm, learner, dataset, variant = key
    return f"{vlsm}_{learner}_{dataset}" + ("" if variant == "default" else f"_{variant}")


def _sigmas(trials: pd.DataFrame, chosen: pd.DataFrame) -> dict[tuple, tuple[float, str]]:
    """Per cell of REF: (sigma in Dice points, where it came from); NaN where neither measure exists."""
    ok = trials[(trials["status"] == STATUS_OK) & trials["test_dice"].notna()]
    search, reseeds = sel.search_only(ok), ok[~ok.index.isin(sel.search_only(ok).index)]
    out: dict[tuple, tuple[float, str]] = {}
    for key, cell in chosen.groupby(sel.CELL_KEYS, sort=False, dropna=False):
        row = cell.iloc[0]
        mine = search[(search[sel.CELL_KEYS] == pd.Series(key, index=sel.CELL_KEYS)).all(axis=1)]
        s_trials = float(np.std(100 * mine["test_dice"], ddof=1)) if len(mine) > 1 else math.nan
        s_seeds = math.nan
        if len(reseeds) and pd.notna(row.get("test_dice")):
            rr = reseeds[(reseeds[sel.CELL_KEYS] == pd.Series(key, index=sel.CELL_KEYS)).all(axis=1)]
            rr = rr[pd.to_numeric(rr["reseed_of"], errors="coerce") == row["trial_index"]]
            if len(rr):
                s_seeds = float(np.std([100 * row["test_dice"], *(100 * rr["test_dice"])], ddof=1))
        if math.isnan(s_seeds) or (not math.isnan(s_trials) and s_trials >= s_seeds):
            out[key] = (s_trials, "trials")
        else:
            out[key] = (s_seeds, "seeds")
    return out


def kendall_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (ties in either ranking allowed); NaN for fewer than 2 pairs or a constant ranking."""
    n = len(x)
    conc = disc = tx = ty = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif dx == dy:
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + tx) * (conc + disc + ty))
    return (conc - disc) / denom if denom else math.nan


def _portable(fingerprint: dict[str, Any] | None) -> dict[str, Any] | None:
    """The fingerprint without where this machine keeps the data and weights. The plan records absolute data
    roots and weight paths (resume must find them again), but two runs of one spec in two checkouts, or on two
    machines, ran the same plan: comparing them is the point of `compare`. A local path is reduced to its last
    component (`/a/data/mini/mini_polyp` -> `mini_polyp`); a hub id has no leading `/` and stays as it is."""
    if not fingerprint:
        return fingerprint
    fp = copy.deepcopy(fingerprint)
    for cell in (fp.get("cells") or {}).values():
        config = cell.get("config") or {}
        for section, key in (("data", "root"), ("model", "weights")):
            value = (config.get(section) or {}).get(key)
            if isinstance(value, str) and Path(value).is_absolute():
                config[section][key] = Path(value).name
    return fp


def compare_runs(run: str | Path, ref: str | Path, z: float = Z_DEFAULT) -> Comparison:
    if not (z > 0 and math.isfinite(z)):
        raise ConfigError(f"--z {z}: must be a positive number (2 = about 95% of noise-only differences pass)")
    rd_run, plan_run, trials_run = _load(run, "RUN")
    rd_ref, plan_ref, trials_ref = _load(ref, "REF")
    if _portable(plan_run.get("fingerprint")) != _portable(plan_ref.get("fingerprint")):
        a, b = plan_run.get("fingerprint") or {}, plan_ref.get("fingerprint") or {}
        what = (f"spec {a.get('spec')!r} vs {b.get('spec')!r}" if a.get("spec") != b.get("spec") else
                f"{len(set(a.get('cells', {})) ^ set(b.get('cells', {})))} cell(s) in one plan only, or other "
                "trial settings")
        raise ConfigError(f"{run} and {ref} ran different plans ({what}; their plan.json fingerprints differ); "
                          "compare two runs of one spec")
    rule = rd_ref.selection()

    rows_run = {_key(r): r for r in trials_run.to_dict("records")}
    rows_ref = {_key(r): r for r in trials_ref.to_dict("records")}
    keys = set(rows_run) | set(rows_ref)
    matched = set(rows_run) & set(rows_ref)
    hp_cols = sorted(c for c in set(trials_run.columns) & set(trials_ref.columns) if c.startswith("hp_"))
    identical = same_hp = 0
    deltas = []
    for k in matched:
        a, b = rows_run[k], rows_ref[k]
        if a["status"] == b["status"] and _same(a.get("objective"), b.get("objective")) and \
                _same(a.get("test_dice"), b.get("test_dice")):
            identical += 1
        if all(_same(a.get(c), b.get(c)) for c in hp_cols):
            same_hp += 1
        if pd.notna(a.get("test_dice")) and pd.notna(b.get("test_dice")):
            deltas.append(100 * abs(float(a["test_dice"]) - float(b["test_dice"])))

    chosen_run = sel.select(trials_run, rule).set_index(sel.CELL_KEYS)
    chosen_ref = sel.select(trials_ref, rule)
    sigmas = _sigmas(trials_ref, chosen_ref)
    known = [s for s, _ in sigmas.values() if not math.isnan(s)]
    fallback = float(np.median(known)) if known else math.nan
    cells = []
    for key, (sigma, source) in sigmas.items():
        if math.isnan(sigma):
            sigma, source = fallback, "median of cells"
        ref_row = chosen_ref.set_index(sel.CELL_KEYS).loc[key]
        run_row = chosen_run.loc[key] if key in chosen_run.index else None
        run_v = run_row["test_dice"] if run_row is not None else math.nan
        same = run_row is not None and _same(run_row.get("trial_index"), ref_row.get("trial_index"))
        cells.append(CellDelta(_cell_name(key), 100 * float(run_v), 100 * float(ref_row["test_dice"]), sigma, source,
                               z * _SQRT2 * sigma, same))
    for key in set(chosen_run.index) - set(sigmas):
        cells.append(CellDelta(_cell_name(key), 100 * float(chosen_run.loc[key, "test_dice"]), math.nan, math.nan,
                               "absent in REF", math.nan))

    t_run, t_ref = T.table3(trials_run, "val", rule), T.table3(trials_ref, "val", rule)
    pairs = [(a, b) for a, b in zip(t_run.mean, t_ref.mean) if math.isfinite(a) and math.isfinite(b)]
    tau = kendall_tau_b([a for a, _ in pairs], [b for _, b in pairs]) if len(pairs) > 1 else math.nan
    return Comparison(str(run), str(ref), z, len(matched), len(keys), identical, same_hp, deltas,
                      sorted(cells, key=lambda c: c.cell), tau, len(pairs))


def render(c: Comparison, show: int = 10) -> list[str]:
    """The lines `tunevlseg compare` prints, the verdict last."""
    lines = [f"compare {c.run} against {c.ref}",
             f"trials matched (cell + trial index): {c.trials_matched}/{c.trials_total}",
             f"identical trials (status, objective and test Dice bit for bit): {c.identical}/{c.trials_total}",
             f"same hyperparameters: {c.same_hp}/{c.trials_matched}"]
    if c.trial_deltas:
        d = np.array(c.trial_deltas)
        lines.append(f"|delta test Dice| per trial (Dice points, n={len(d)}): median {np.median(d):.2f}, "
                     f"90th percentile {np.percentile(d, 90):.2f}, max {d.max():.2f}")
    lines.append(f"cells whose selected trial differs: {sum(not x.same_trial for x in c.cells)}/{len(c.cells)}")
    ds = [x.delta for x in c.cells if not math.isnan(x.delta)]
    if ds:
        lines.append(f"|delta test Dice| per selected cell (n={len(ds)}): median {np.median(ds):.2f}, "
                     f"max {max(ds):.2f}; tolerance per cell = {c.z:g}*sqrt(2)*sigma, sigma = the cell's spread "
                     "in REF (max of its trials' std and its std over seeds)")
    worst = sorted(c.cells, key=lambda x: -(x.delta / x.tolerance if x.tolerance and x.tolerance > 0 and
                                            not math.isnan(x.delta) else math.inf if x.beyond else 0))
    lines.append("| cell | RUN | REF | |delta| | sigma (from) | tolerance | beyond |")
    lines.append("|---|---|---|---|---|---|---|")
    for x in worst[:show]:
        lines.append(f"| {x.cell} | {_pt(x.run)} | {_pt(x.ref)} | {_pt(x.delta)} | {_pt(x.sigma)} ({x.sigma_from}) | "
                     f"{_pt(x.tolerance)} | {'yes' if x.beyond else 'no'} |")
    if len(worst) > show:
        lines.append(f"({len(worst) - show} more cells, closer to the reference; --show N lists more)")
    tau = "n/a" if math.isnan(c.tau) else f"{c.tau:.3f}"
    lines.append(f"ranking agreement: Kendall tau-b {tau} over {c.tau_rows} rows of Table 3 (by mean Dice over "
                 "datasets; 1 = same order)")
    lines.append(c.verdict())
    return lines
