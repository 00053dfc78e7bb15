"""Variance over seeds (spec `select: {reseed: K}`): after a cell's search has finished all its trials, its
selected configuration runs again with K further training seeds.

The paper reads each cell from one trial; a reader cannot tell whether a gap between learners is larger
than what another seed would move. The reseed trials answer that: same hyperparameters as the selected
trial, `train.seed` = base seed + k (k = 1..K), everything else unchanged.

How they run: `MultiCellSearcher` keeps a `Reseeds` beside its studies (pickled with it, so it resumes like
the searcher). It records every finished search trial of a cell (index, status, the selection metric);
when all of them have finished it picks the selected trial with the one rule (`run_dir.select`) and offers
K trials with that trial's values. A reseed trial:
- carries `config["reseed"] = {"k", "of", "seed"}`; its Parquet row has `reseed` = k, `reseed_of` = the
  selected trial's index and `seed`; its MLflow run the tag `reseed`;
- is never told to Optuna (it would count as an extra TPE trial and change the study);
- is never a candidate of the selection rule (`run_dir.select` skips rows with `reseed`);
- has trial index `trials + k - 1`, after the search's, so trial directories and rows stay unique.
A cell whose search left no selectable trial (all failed or diverged) gets no reseeds.

Resume: a reseed trial issued after the searcher's last snapshot is unknown to the restored experiment; its
row is dropped by the orphan rule and the restored `Reseeds` issues that k again, so a cell ends with
exactly K reseed rows.
"""

from __future__ import annotations

import copy

from benchmark.plan.spec import Selection
from benchmark.results.run_dir import is_reseed, select
from trainables.protocol import STATUS_ERROR, STATUS_OK
from trainables.trial_config import DEFAULT_SEED  # a trial config without `train.seed` runs with it


def base_seed(config: dict) -> int:
    return int(config.get("train", {}).get("seed", DEFAULT_SEED))


def expected(cell, rows: dict | list, rule: Selection) -> int:
    """Trials a cell ends with: its search, plus K reseeds once the search has a selected trial."""
    rows = list(rows.values()) if isinstance(rows, dict) else list(rows)
    search = [r for r in rows if not is_reseed(r)]
    if cell.reseeds and len(search) >= cell.trials and select(search, rule) is None:
        return cell.trials
    return cell.trials + cell.reseeds


class Reseeds:
    """Per-cell state of the reseed trials (lives inside `MultiCellSearcher`)."""

    def __init__(self, cells, rule: Selection):
        self.rule = Selection(by=rule.by, mode=rule.mode, report=rule.report)
        self.k = {c.id: c.reseeds for c in cells}
        self.search_trials = {c.id: c.trials for c in cells}
        self.suggested: dict[str, tuple[int, dict]] = {}  # search trial id -> (trial_index, hp)
        self.finished: dict[str, dict[str, dict]] = {c.id: {} for c in cells}  # cid -> trial id -> record
        self.issued = {c.id: 0 for c in cells}
        self.trials: dict[str, str] = {}  # reseed trial id -> cell id
        self.selected: dict[str, dict | None] = {}  # cid -> the selected record, once the search is done

    def adopt(self, rule: Selection, rows: list[dict] | None = None) -> None:
        """The spec's rule of this driver (a restored searcher holds the one of the first start): a cell
        that has issued no reseed yet chooses again under it. A rule that matched no metric (a typo, before
        specs were checked) chose nothing, and the sweep could never end after the spec was fixed."""
        rule = Selection(by=rule.by, mode=rule.mode, report=rule.report)
        if rule == self.rule:
            return
        self.rule = rule
        for cid in list(self.selected):
            if not self.issued.get(cid):
                del self.selected[cid]
        by_id = {r["trial_id"]: r for r in rows or ()}
        for done in self.finished.values():  # the metric the new rule ranks by, from the trial's Parquet row
            for tid, rec in done.items():
                if rec.get(rule.by) is None and tid in by_id:
                    rec[rule.by] = by_id[tid].get(rule.by)

    # -- search trials
    def note_suggested(self, trial_id: str, index: int, hp: dict) -> None:
        self.suggested[trial_id] = (index, dict(hp))

    def on_complete(self, cid: str, trial_id: str, result: dict | None, error: bool) -> bool:
        """Record a finished trial; True when it was a reseed trial (the caller must not tell Optuna)."""
        if trial_id in self.trials:
            return True
        if trial_id not in self.suggested or not self.k.get(cid):
            return False
        result = result or {}
        index, hp = self.suggested[trial_id]
        status = STATUS_ERROR if error else str(result.get("status") or STATUS_OK)
        self.finished[cid][trial_id] = {"trial_index": index, "hp": hp, "status": status,
                                        self.rule.by: result.get(self.rule.by)}
        return False

    def metrics(self) -> tuple[str, ...]:
        """Result keys a finished trial's record needs (for settling trials from Parquet rows)."""
        return (self.rule.by,)

    # -- reseed trials
    def _selected(self, cid: str) -> dict | None:
        if cid not in self.selected:
            done = self.finished[cid]
            if len(done) < self.search_trials[cid]:
                raise LookupError(cid)  # search still running
            self.selected[cid] = select(list(done.values()), self.rule)
        return self.selected[cid]

    def pending(self, cid: str) -> bool:
        """Whether the cell may still issue reseed trials (its search unfinished, or reseeds left)."""
        if not self.k.get(cid):
            return False
        try:
            chosen = self._selected(cid)
        except LookupError:
            return True
        return chosen is not None and self.issued[cid] < self.k[cid]

    def next_trial(self, trial_id: str, base: dict[str, dict], apply_values) -> dict | None:
        """A reseed trial of a cell whose search has finished, or None."""
        for cid in self.k:
            if not self.pending(cid):
                continue
            try:
                chosen = self._selected(cid)
            except LookupError:
                continue
            k = self.issued[cid] + 1
            self.issued[cid] = k
            self.trials[trial_id] = cid
            cell = base[cid]
            trial = apply_values(copy.deepcopy(cell["config"]), cell["params"], chosen["hp"])
            seed = base_seed(trial) + k
            trial.setdefault("train", {})["seed"] = seed
            return {"cell_id": cid, "trial_index": self.search_trials[cid] + k - 1, "hp": dict(chosen["hp"]),
                    "trial": trial, "resources": dict(cell["resources"]),
                    "reseed": {"k": k, "of": chosen["trial_index"], "seed": seed}}
        return None
