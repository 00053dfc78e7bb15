"""Spec -> cells: the (VLSM x learner x dataset x variant) matrix, each cell with its trial config.

A (VLSM, learner) pair is viable when every encoder the learner prompts exists on the VLSM
(`trainables.catalog.is_viable`); there is no hand-written list of pairs. Cell ids follow
mmsegmentation's rule, `_` between fields and `-` inside a field: `clipseg_shared-attention_kvasir`, with
the variant appended when it is not `default` (`clipseg_maple_kvasir_gaussian-init`).

Learners and VLSMs are read from the torch-free catalog (`trainables.catalog`): a learner or VLSM registered
there, by its folder or by a test, is on the matrix; no name list lives here, and no torch is imported.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from benchmark.plan import search_space
from benchmark.plan.search_space import Param
from benchmark.plan.spec import Rule, Spec
from trainables.catalog import LEARNERS, VLSMS
from trainables.config import ConfigError, from_dict
from trainables.learners.config import DEPTH_RANGE
from trainables.registry import UnknownNameError

PAPER_DATASETS = ("kvasir", "clinicdb", "bkai", "isic", "dfu", "busi", "camus", "chexlocalize", "cityscapes", "voc")


@dataclass(frozen=True, eq=False)
class Cell:
    spec: str
    vlsm: str
    learner: str
    dataset: str
    variant: str
    trials: int
    seed: int
    space: str
    params: tuple[Param, ...]
    config: dict  # the nested trial config before the searched values are applied
    resources: dict  # {"cpu": float, "gpu": float} per trial
    reseeds: int = 0  # trials rerunning the selected configuration with further seeds (spec select.reseed)

    @property
    def id(self) -> str:
        return cell_id(self.vlsm, self.learner, self.dataset, self.variant)

    @property
    def keys(self) -> dict[str, str]:
        return {"vlsm": self.vlsm, "learner": self.learner, "dataset": self.dataset, "variant": self.variant}

    def summary(self) -> dict[str, Any]:
        return {"cell_id": self.id, **self.keys, "trials": self.trials, "searched": [p.name for p in self.params],
                "seed": self.seed if self.params else None, "resources": dict(self.resources),
                "data_root": self.config.get("data", {}).get("root")}


@dataclass(frozen=True, eq=False)
class Plan:
    spec: Spec
    cells: tuple[Cell, ...] = field(default_factory=tuple)

    @property
    def total_trials(self) -> int:
        return sum(c.trials + c.reseeds for c in self.cells)

    def cell(self, cid: str) -> Cell:
        cid = match_cell(cid, [c.id for c in self.cells])
        for c in self.cells:
            if c.id == cid:
                return c
        raise KeyError(cid)

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between a sweep and its resumption: everything that shapes a trial. Each
        cell's full trial config (fixed settings, rules, variant, data roots, weights), its search space
        with bounds, its seed and resources; the trainable, the TPE settings and the early-stopping rule."""
        s, ex = self.spec.search, self.spec.execution
        fp = {"version": 2, "spec": self.spec.name, "trainable": self.spec.trainable,
              "search": {"sampler": s.sampler, "n_startup_trials": s.n_startup_trials, "multivariate": s.multivariate,
                         "constant_liar": s.constant_liar, "metric": s.metric, "mode": s.mode},
              "scheduler": {"name": ex.scheduler, "grace_period": ex.grace_period,
                            "reduction_factor": ex.reduction_factor},
              "cells": {c.id: {"trials": c.trials, "seed": c.seed, "space": c.space,
                               "params": {p.name: {"kind": p.kind, "target": p.target, "low": p.low, "high": p.high,
                                                   "log": p.log, "choices": list(p.choices) if p.choices else None}
                                          for p in c.params},
                               "resources": dict(c.resources), "config": c.config,
                               # only where set, so a plan without reruns keeps the fingerprint it always had
                               **({"reseeds": c.reseeds} if c.reseeds else {})}
                        for c in self.cells}}
        return json.loads(json.dumps(fp, default=str))  # as read back from plan.json

    def searched_space(self) -> list[dict[str, Any]]:
        """Every distinct searched domain of the plan (bounds applied), with the learners that searched it:
        what Table 2 of this run must show. Recorded in plan.json beside the fingerprint."""
        merged: dict[str, dict[str, Any]] = {}
        for c in self.cells:
            for p in c.params:
                d = p.as_dict()
                learners = d.pop("applies_to")
                key = json.dumps(d, sort_keys=True)
                entry = merged.setdefault(key, {**d, "applies_to": []})
                if c.learner not in entry["applies_to"]:
                    entry["applies_to"].append(c.learner)
                order = {l: i for i, l in enumerate(learners)}
                entry["applies_to"].sort(key=lambda l: order.get(l, len(order)))
        order = {n: i for i, n in enumerate(search_space.HP_NAMES)}
        return sorted(merged.values(), key=lambda e: order.get(e["name"], len(order)))  # stable: paper order


def cell_id(vlsm: str, learner: str, dataset: str, variant: str = "default") -> str:
    fields = [vlsm, learner, dataset] + ([] if variant == "default" else [variant])
    return "_".join(f.replace("_", "-") for f in fields)


def match_cell(name: str, known, where: str = "cell") -> str:
    """The cell id in `known` that `name` spells, reading '_' and '-' alike (`clipseg_shared_attention_kvasir`
    is `clipseg_shared-attention_kvasir`); a miss is a ConfigError with the closest ids."""
    import difflib

    known = list(known)
    if name in known:
        return name
    flat = {k.replace("-", "_"): k for k in known}
    if name.replace("-", "_") in flat:
        return flat[name.replace("-", "_")]
    close = difflib.get_close_matches(name.replace("-", "_"), list(flat), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(flat[c]) for c in close)}? " if close else ""
    shown = ", ".join(sorted(known)[:8]) + (f", ... ({len(known)} in all)" if len(known) > 8 else "")
    raise ConfigError(f"{where} {name!r} is not in this run; {hint}cells: {shown}")


# --- catalog look-ups ----------------------------------------------------------------------------------


def learner_modalities(name: str) -> frozenset[str]:
    return LEARNERS.get(name).modalities  # unknown name -> one line listing the registered learners


def vlsm_modalities(name: str) -> frozenset[str]:
    return VLSMS.get(name).modalities


def dataset_names() -> list[str]:
    """Paper datasets plus every data card in the folder the trials read cards from (`datasets/`, or
    $TUNEVLSEG_CARDS), e.g. the mini sets or a user's own."""
    from trainables.data.cards import cards_dir

    try:
        cards = sorted(p.stem for p in cards_dir().glob("*.yaml"))
    except FileNotFoundError:
        cards = []
    return sorted(set(PAPER_DATASETS) | set(cards))


# --- expansion ----------------------------------------------------------------------------------------


def viable(learner: str, vlsm: str) -> bool:
    return learner_modalities(learner) <= vlsm_modalities(vlsm)


def _pairs(spec: Spec) -> list[tuple[str, str]]:
    axes = spec.axes
    if axes.pairs is not None:
        for v, lrn in axes.pairs:
            if not viable(lrn, v):
                raise ConfigError(
                    f"axes.pairs: ({v}, {lrn}) is not viable: {lrn} prompts "
                    f"the {_words(learner_modalities(lrn))} encoder but {v} accepts prompts only in "
                    f"{_words(vlsm_modalities(v))}; remove the pair")
        return list(axes.pairs)
    for v in axes.vlsm:
        vlsm_modalities(v)  # unknown name -> error
    pairs = []
    for lrn in axes.learner:
        ok = [v for v in axes.vlsm if viable(lrn, v)]
        if not ok:
            raise ConfigError(
                f"axes.learner: {lrn} prompts the {_words(learner_modalities(lrn))} encoder, which none of axes.vlsm "
                f"{list(axes.vlsm)} accepts; remove it or add a VLSM that has that encoder")
        pairs.extend((v, lrn) for v in ok)
    # Order: by VLSM as listed, then learner as listed (stable ids, readable plans).
    order = {v: i for i, v in enumerate(axes.vlsm)}
    return sorted(pairs, key=lambda p: order[p[0]])


def _words(mods: Iterable[str]) -> str:
    return " and ".join(sorted(mods)) or "nothing"


def _check_names(spec: Spec) -> None:
    known = dataset_names()
    for ds in spec.axes.dataset:
        if ds not in known:
            from trainables.resources import did_you_mean

            raise ConfigError(f"axes.dataset: unknown dataset {ds!r}{did_you_mean(ds, known)}; allowed: "
                              f"{', '.join(known)}")
    for axis, names, look_up in (("learner", spec.axes.learner, learner_modalities), ("vlsm", spec.axes.vlsm,
                                                                                   vlsm_modalities)):
        for name in names:
            try:
                look_up(name)
            except UnknownNameError as e:  # the registry's line (with its did-you-mean), placed on the axis
                raise ConfigError(f"axes.{axis}: {e}") from None
    for ds in spec.data.roots:
        if ds not in spec.axes.dataset:
            raise ConfigError(f"data.roots.{ds}: {ds!r} is not on axes.dataset {list(spec.axes.dataset)}")
    fields = {"vlsm": set(spec.axes.vlsm) | {p[0] for p in spec.axes.pairs or ()},
              "learner": set(spec.axes.learner) | {p[1] for p in spec.axes.pairs or ()},
              "dataset": set(spec.axes.dataset), "variant": set(spec.axes.variant)}
    for i, rule in enumerate(spec.rules):
        for key, want in rule.when.items():
            for value in want if isinstance(want, (list, tuple)) else [want]:
                if value not in fields[key]:
                    raise ConfigError(f"rules[{i}].when.{key}: {value!r} is not on the axes "
                                      f"({', '.join(sorted(fields[key]))}); a typo?")


def canonical_names(spec: Spec) -> Spec:
    """The spec with every VLSM, learner, dataset and variant name in its registered spelling: a spec may
    write `shared-attention` or `mini-polyp` (as in cell ids) and still get one spelling in tags, rows and
    tables."""
    import dataclasses

    from benchmark.plan.spec import BUILTIN_VARIANTS
    from trainables.registry import spelling

    known = {"vlsm": VLSMS.names(), "learner": LEARNERS.names(), "dataset": dataset_names(),
             "variant": list(BUILTIN_VARIANTS) + list(spec.variants)}

    def fix(field_name: str, value):
        if isinstance(value, (list, tuple)):
            return type(value)(fix(field_name, v) for v in value)
        return spelling(value, known[field_name]) if field_name in known else value

    a = spec.axes
    axes = dataclasses.replace(
        a, vlsm=fix("vlsm", a.vlsm), learner=fix("learner", a.learner), dataset=fix("dataset", a.dataset),
        variant=fix("variant", a.variant),
        pairs=None if a.pairs is None else tuple((fix("vlsm", v), fix("learner", lrn)) for v, lrn in a.pairs),
        skip=tuple({k: fix(k, v) for k, v in r.items()} if isinstance(r, dict) else r for r in a.skip))
    rules = tuple(dataclasses.replace(r, when={k: fix(k, v) for k, v in r.when.items()}) for r in spec.rules)
    data = dataclasses.replace(spec.data, roots={fix("dataset", k): v for k, v in spec.data.roots.items()})
    vlsms = {fix("vlsm", k): v for k, v in spec.vlsms.items()}
    return dataclasses.replace(spec, axes=axes, rules=rules, data=data, vlsms=vlsms)


def build_plan(spec: Spec) -> Plan:
    """Expand a spec into cells. Raises ConfigError/UnknownNameError before anything runs."""
    spec = canonical_names(spec)
    _check_names(spec)
    cells = []
    for vlsm, learner in _pairs(spec):
        for dataset in spec.axes.dataset:
            for variant in spec.axes.variant:
                keys = {"vlsm": vlsm, "learner": learner, "dataset": dataset, "variant": variant}
                if any(Rule(when=dict(rule), set={}).matches(keys) for rule in spec.axes.skip):
                    continue
                cells.append(_make_cell(spec, vlsm, learner, dataset, variant))
    plan = Plan(spec=spec, cells=tuple(cells))
    _check_learner_configs(plan)
    return plan


def _make_cell(spec: Spec, vlsm: str, learner: str, dataset: str, variant: str) -> Cell:
    keys = {"vlsm": vlsm, "learner": learner, "dataset": dataset, "variant": variant}
    config: dict[str, Any] = copy.deepcopy(spec.fixed)
    for section in ("model", "data", "train"):
        config.setdefault(section, {})
    model = config["model"]
    model["vlsm"], model["learner"] = vlsm, learner
    model.setdefault("learner_config", {})
    settings = spec.vlsms.get(vlsm)
    if settings is not None:
        model["weights"] = settings.weights
        if settings.config is not None:
            model["vlsm_config"] = copy.deepcopy(settings.config)
        if settings.options:
            model["vlsm_options"] = {**model.get("vlsm_options", {}), **settings.options}
    config["data"]["dataset"] = dataset
    config["data"]["root"] = spec.data.root_for(dataset)
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    sets = dict(spec.variant_settings(variant))
    for rule in spec.rules:
        if rule.matches(keys):
            sets.update(rule.set)
    for dotted, value in sets.items():
        if dotted.startswith("resources."):
            resources[dotted.split(".", 1)[1]] = float(value)
        else:
            search_space.set_path(config, dotted, copy.deepcopy(value))
    params = search_space.narrow(search_space.params_for(learner, spec.search.space), spec.search.bounds)
    if params:
        _check_depth_bound(vlsm, spec.search.bounds)
    seed = spec.search.seed if spec.search.seed is not None else search_space.seed_for(learner)
    # Nothing to search (E2E): one trial with the fixed settings, as the original ran it.
    trials = spec.search.trials if params else 1
    return Cell(spec=spec.name, vlsm=vlsm, learner=learner, dataset=dataset, variant=variant, trials=trials,
                seed=seed, space=spec.search.space, params=params, config=config, resources=resources,
                reseeds=spec.select.reseed)


def _check_depth_bound(vlsm: str, bounds: dict | None) -> None:
    """A spec's `search.bounds.prompt_depth` must stay within the paper's range and the layers of the VLSM that
    take prompts (its card's `max_prompt_depth`): a trial beyond them could only fail."""
    bound = (bounds or {}).get("prompt_depth")
    if bound is None:
        return
    card = VLSMS.get(vlsm)
    lo, hi = DEPTH_RANGE[0], min(DEPTH_RANGE[1], card.max_prompt_depth)
    if bound[0] < lo or bound[1] > hi:
        raise ConfigError(f"search.bounds.prompt_depth: {list(bound)} goes beyond what {vlsm} takes; allowed: "
                          f"{lo}..{hi} (the paper's {DEPTH_RANGE[0]}..{DEPTH_RANGE[1]}, at most its card's "
                          f"max_prompt_depth {card.max_prompt_depth})")


def _check_learner_configs(plan: Plan) -> None:
    """Fixed learner settings with a typo fail here, not in every trial."""
    seen = set()
    for cell in plan.cells:
        cls = LEARNERS.get(cell.learner).config_cls
        lc = dict(cell.config["model"].get("learner_config", {}))
        for p in cell.params:  # a representative value of each searched parameter
            if p.target.startswith("model.learner_config."):
                lc[p.target.rsplit(".", 1)[1]] = p.example()
        key = (cell.learner, repr(sorted(lc.items(), key=lambda kv: kv[0])))
        if key in seen:
            continue
        seen.add(key)
        from_dict(cls, lc, where=f"cell {cell.id} model.learner_config")


def check_paths(plan: Plan) -> None:
    """Every dataset root and local weights path must exist before any trial starts."""
    for name, settings in plan.spec.vlsms.items():
        w = settings.weights
        if w is not None and Path(w).is_absolute() and not Path(w).exists():
            raise FileNotFoundError(f"vlsms.{name}.weights: {w} does not exist; build or download the weights "
                                    "there, or give a hub id")
    missing = {}
    for cell in plan.cells:
        root = cell.config["data"].get("root")
        if root is None:
            raise ConfigError(f"no data root for dataset {cell.dataset!r}: pass --data DIR (datasets live in "
                              f"DIR/<dataset>) or set data.root / data.roots.{cell.dataset} in the spec")
        if not Path(root).is_dir():
            missing.setdefault(cell.dataset, root)
    if missing:
        ds, root = next(iter(missing.items()))
        more = f" (and {len(missing) - 1} more: {', '.join(list(missing)[1:])})" if len(missing) > 1 else ""
        raise FileNotFoundError(f"dataset root for {ds!r} does not exist: {root}{more}; download it there, pass "
                                f"--data DIR, or set data.roots.{ds} in the spec")
