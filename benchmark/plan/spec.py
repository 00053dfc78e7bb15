"""Experiment specs: `experiments/*.yaml` loaded strictly into frozen dataclasses.

A spec names registry keys (`learner: maple`), never import paths, and states only what differs from the
defaults of the dataclasses below and of the trial code. Everything a sweep needs is here: the axes of the
matrix, the variants, the fixed training settings (a nested trial config), per-cell rules, the search
settings, resources per trial and the selection rule. Names are checked against the catalog later, in
`benchmark.plan.matrix` (this module stays free of torch and of the catalog).

Relative paths in a spec (data roots, local weights) resolve against the project root when the spec lives
in an `experiments/` folder (for a shipped spec: the checkout, or the installed package's copy of the
project's folders, see `trainables.resources`), else against the spec's own folder, and are made absolute at load time: a
Ray trial runs in a temporary working directory and must never see a relative path.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from trainables.catalog import VLSMS
from trainables.config import ConfigError, from_dict, read_yaml_mapping
from trainables.resources import is_local_path

DEFAULT_TRAINABLE = "trainables.trial.tune_trainable"
CELL_FIELDS = ("vlsm", "learner", "dataset", "variant")
# Sections of the nested trial config a spec may set (`fake` is read by trainables.fake only).
TRIAL_SECTIONS = ("model", "data", "train", "fake")

# Variants shipped with the project (contract names); a spec may define more under `variants:`.
BUILTIN_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "gaussian_init": {"model.learner_config.context_init": None},  # Table 4: N(0, 0.02) instead of "a photo of a"
    "no_upsampler": {"model.upsampler": False},  # Table 5: without the learnable upsampler
}

_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


@dataclass(frozen=True)
class Axes:
    """The matrix: every viable (vlsm, learner) pair x dataset x variant.

    `pairs` replaces the vlsm x learner product with an explicit list of [vlsm, learner]; every listed
    pair must then be viable (a non-viable pair requested explicitly is an error, not a silent skip).
    """

    vlsm: tuple[str, ...] = field(default_factory=lambda: tuple(VLSMS.names()))  # every VLSM of the catalog
    learner: tuple[str, ...] = ()
    dataset: tuple[str, ...] = ()
    variant: tuple[str, ...] = ("default",)
    pairs: tuple[tuple[str, str], ...] | None = None
    # Cells to leave out, each a {field: value or [values]} match on vlsm/learner/dataset/variant, e.g.
    # run the Table 4 variant for MaPLe only: [{variant: gaussian_init, learner: [coop, vpt]}].
    skip: tuple = ()


@dataclass(frozen=True)
class VLSMSettings:
    """How to build one VLSM: copied into the trial's `model.weights/vlsm_config/vlsm_options`."""

    weights: str | None = None
    config: str | dict | None = None
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    """Per-cell settings: when every key of `when` matches the cell, `set` dotted paths in the trial
    config (`train.batch_size`, `model.learner_config.num_context`) or in `resources.{cpu,gpu}`."""

    when: dict
    set: dict

    def matches(self, cell: Mapping[str, str]) -> bool:
        for key, want in self.when.items():
            allowed = want if isinstance(want, (list, tuple)) else (want,)
            if cell[key] not in allowed:
                return False
        return True


@dataclass(frozen=True)
class SearchSettings:
    trials: int = 20  # per prompt-tuning cell; cells without searched parameters (E2E) run once
    space: str = "paper"  # or "reference" (benchmark.plan.search_space)
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int | None = None  # None: the original's per-learner seeds
    n_startup_trials: int = 10
    multivariate: bool = True
    constant_liar: bool = True
    metric: str = "objective"  # reported in the trial's final result
    mode: Literal["min", "max"] = "min"
    max_concurrent_per_cell: int | None = None
    # Narrow a parameter for a smaller model, e.g. {prompt_depth: [1, 6]} for a 6-layer mini VLSM
    # ([low, high] for numeric parameters, a list of choices for categorical ones).
    bounds: dict = field(default_factory=dict)
    # Where each cell's Optuna study is stored: a SQLAlchemy URL; None: sqlite:///<run dir>/optuna.db
    # (benchmark/sweep/studies.py). On a cluster the driver writes it, so a local path is fine there too.
    storage: str | None = None


@dataclass(frozen=True)
class Resources:
    """Per trial; GPUs may be fractional (prompt tuning is small)."""

    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class Execution:
    max_failures: int = 1  # retries of a trial whose worker died (node loss); the trial resumes from its checkpoint
    max_concurrent_trials: int | None = None  # None: as many as resources allow
    # A reused worker keeps the frozen VLSM and the decoded datasets from one trial to the next: the fixed
    # cost of a trial drops from ~30% to a few % of a Kvasir-sized GPU trial (BENCHMARKS.md). false: a
    # fresh process per trial (clean CUDA state, every trial pays imports, weights and decoding).
    reuse_actors: bool = True
    checkpoints_to_keep: int = 2
    # Early stopping across a cell's trials (benchmark/sweep/scheduler.py): "asha" stops a trial whose val_loss
    # at a rung (grace_period, x reduction_factor, ... epochs) is worse than the best 1/reduction_factor of
    # its cell's trials there; Optuna records it PRUNED. "none": every trial runs its epochs (the paper).
    scheduler: Literal["none", "asha"] = "none"
    grace_period: int = 2
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class Selection:
    """Which trial of a cell is reported: best `by` (in `mode`), reporting its `report` metric."""

    by: str = "objective"
    mode: Literal["min", "max"] = "min"
    report: str = "test_dice"
    # After a cell's search, rerun its selected configuration with this many further training seeds
    # (seed = base + 1..K): variance over seeds, beyond the paper (benchmark/sweep/reseed.py).
    reseed: int = 0


@dataclass(frozen=True)
class DataSettings:
    root: str | None = None  # dataset D lives in <root>/<D> unless `roots` names it
    roots: dict = field(default_factory=dict)

    def root_for(self, dataset: str) -> str | None:
        if dataset in self.roots:
            return self.roots[dataset]
        return None if self.root is None else str(Path(self.root) / dataset)


@dataclass(frozen=True)
class Tracking:
    mlflow: bool = True
    uri: str | None = None  # None: sqlite:///<run dir>/mlflow.db, created by the driver


@dataclass(frozen=True)
class Spec:
    name: str
    description: str = ""
    trainable: str = DEFAULT_TRAINABLE
    axes: Axes = field(default_factory=Axes)
    vlsms: dict = field(default_factory=dict)  # name -> VLSMSettings
    variants: dict = field(default_factory=dict)  # custom variant name -> {dotted path: value}
    fixed: dict = field(default_factory=dict)  # nested trial config shared by every cell
    rules: tuple[Rule, ...] = ()
    search: SearchSettings = field(default_factory=SearchSettings)
    resources: Resources = field(default_factory=Resources)
    execution: Execution = field(default_factory=Execution)
    select: Selection = field(default_factory=Selection)
    data: DataSettings = field(default_factory=DataSettings)
    tracking: Tracking = field(default_factory=Tracking)
    path: str | None = None  # the YAML file (set by the loader)

    def variant_settings(self, name: str) -> dict[str, Any]:
        if name in self.variants:
            return dict(self.variants[name])
        return dict(BUILTIN_VARIANTS[name])

    def with_data_root(self, root: str | Path) -> "Spec":
        root = Path(root).expanduser()
        if not root.is_absolute():
            root = Path.cwd() / root
        return dataclasses.replace(self, data=dataclasses.replace(self.data, root=str(root)))


_SECTIONS = {"axes": Axes, "search": SearchSettings, "resources": Resources, "execution": Execution,
             "select": Selection, "data": DataSettings, "tracking": Tracking}


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec, given by path or by the name of a shipped one (`table3`:
    `trainables.resources.resolve_spec`); errors name the file and the offending key."""
    from trainables.resources import resolve_spec

    path = resolve_spec(path)
    raw = read_yaml_mapping(path, str(path), "name, axes, search, ...")
    try:
        return spec_from_dict(raw, base_dir=project_dir(path), default_name=path.stem, path=str(path.resolve()))
    except ConfigError as e:
        raise ConfigError(f"{path.name}: {e}") from None


def project_dir(spec_path: Path) -> Path:
    folder = spec_path.resolve().parent
    return folder.parent if folder.name == "experiments" else folder


def spec_from_dict(raw: Mapping[str, Any], base_dir: str | Path = ".", default_name: str = "spec",
                   path: str | None = None) -> Spec:
    base = Path(base_dir).resolve()
    data = dict(raw)
    if "path" in data:  # set by the loader, never by the user
        raise ConfigError("unknown key 'path'; allowed: " + ", ".join(f for f in _spec_keys() if f != "path"))
    data.setdefault("name", default_name)
    for key, cls in _SECTIONS.items():
        if key in data:
            if not isinstance(data[key], dict):
                raise ConfigError(f"{key}: expected a mapping of settings, got {data[key]!r}")
            data[key] = from_dict(cls, data[key], where=key)
    if "rules" in data:
        data["rules"] = tuple(_rule(r, i) for i, r in enumerate(_as_list(data["rules"], "rules")))
    if "vlsms" in data:
        data["vlsms"] = {name: from_dict(VLSMSettings, v or {}, where=f"vlsms.{name}")
                         for name, v in _as_mapping(data["vlsms"], "vlsms").items()}
    spec = from_dict(Spec, data, where="")
    spec = _normalise(spec, base)
    spec = dataclasses.replace(spec, path=path)
    _validate(spec)
    return spec


def _spec_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(Spec)]


def _as_list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    return value


def _as_mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return value


def _rule(raw: Any, i: int) -> Rule:
    rule = from_dict(Rule, _as_mapping(raw, f"rules[{i}]"), where=f"rules[{i}]")
    when = _as_mapping(rule.when, f"rules[{i}].when")
    bad = sorted(set(when) - set(CELL_FIELDS))
    if bad:
        raise ConfigError(f"rules[{i}].when: unknown key {bad[0]!r}; allowed: {', '.join(CELL_FIELDS)}")
    sets = _as_mapping(rule.set, f"rules[{i}].set")
    for dotted in sets:
        _check_set_path(dotted, f"rules[{i}].set", allow_resources=True)
    return Rule(when=dict(when), set=dict(sets))


def _check_set_path(dotted: Any, where: str, allow_resources: bool = False) -> None:
    roots = TRIAL_SECTIONS + (("resources",) if allow_resources else ())
    if not isinstance(dotted, str) or dotted.split(".")[0] not in roots or "." not in dotted:
        raise ConfigError(f"{where}: {dotted!r} must be a dotted path starting with one of "
                          f"{', '.join(r + '.' for r in roots)} (e.g. train.batch_size)")
    if dotted.startswith("resources.") and dotted.split(".", 1)[1] not in ("cpu", "gpu"):
        raise ConfigError(f"{where}: {dotted!r}: resources has only cpu and gpu")


def _tuple_of_names(value: Any, where: str) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if not isinstance(v, str) or not _NAME.match(v):
            raise ConfigError(f"{where}: {v!r} is not a name (lower-case letters, digits, '_' or '-')")
    if len(set(items)) != len(items):
        raise ConfigError(f"{where}: duplicate entries in {list(items)}")
    return tuple(items)


def _resolve_path(value: str, base: Path) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _variant_spellings(names: tuple[str, ...], spec: Spec) -> tuple[str, ...]:
    """`no-upsampler` (as in cell ids) is the variant `no_upsampler`."""
    from trainables.registry import spelling

    known = list(BUILTIN_VARIANTS) + list(spec.variants or {})
    return tuple(spelling(v, known) for v in names)


def _normalise(spec: Spec, base: Path) -> Spec:
    axes = spec.axes
    pairs = None
    if axes.pairs is not None:
        pairs = []
        for i, pair in enumerate(axes.pairs):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise ConfigError(f"axes.pairs[{i}]: expected [vlsm, learner], got {pair!r}")
            pairs.append((pair[0], pair[1]))
        pairs = tuple(pairs)
    axes = Axes(vlsm=_tuple_of_names(axes.vlsm, "axes.vlsm"), learner=_tuple_of_names(axes.learner, "axes.learner"),
                dataset=_tuple_of_names(axes.dataset, "axes.dataset"),
                variant=_variant_spellings(_tuple_of_names(axes.variant, "axes.variant"), spec), pairs=pairs,
                skip=tuple(dict(r) if isinstance(r, Mapping) else r for r in (axes.skip or ())))
    data = spec.data
    roots = {ds: _resolve_path(str(p), base) for ds, p in _as_mapping(data.roots, "data.roots").items()}
    data = DataSettings(root=None if data.root is None else _resolve_path(data.root, base), roots=roots)
    vlsms = {}
    for name, v in spec.vlsms.items():
        # `weights` is a local path or a hub id: make it absolute only when it names something on disk.
        weights = v.weights
        if weights is not None and is_local_path(weights, base):
            weights = _resolve_path(weights, base)
        vlsms[name] = VLSMSettings(weights=weights, config=v.config, options=dict(v.options or {}))
    return dataclasses.replace(spec, axes=axes, data=data, vlsms=vlsms)


def _validate(spec: Spec) -> None:
    if not _NAME.match(spec.name):
        raise ConfigError(f"name: {spec.name!r} must be lower-case letters, digits, '_' or '-'")
    if not spec.axes.dataset:
        raise ConfigError("axes.dataset: list at least one dataset")
    if not spec.axes.learner and spec.axes.pairs is None:
        raise ConfigError("axes.learner: list at least one learner (or give axes.pairs)")
    if not spec.axes.variant:
        raise ConfigError("axes.variant: list at least one variant (usually [default])")
    for i, rule in enumerate(spec.axes.skip):
        if not isinstance(rule, Mapping) or not rule:
            raise ConfigError(f"axes.skip[{i}]: expected a mapping like {{variant: no_upsampler, learner: coop}}")
        unknown = sorted(set(rule) - set(CELL_FIELDS))
        if unknown:
            raise ConfigError(f"axes.skip[{i}]: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(CELL_FIELDS)}")
    if not isinstance(spec.trainable, str) or not re.match(r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*$", spec.trainable):
        raise ConfigError(f"trainable: {spec.trainable!r} must be an import path like {DEFAULT_TRAINABLE}")
    for name, sets in _as_mapping(spec.variants, "variants").items():
        if name in BUILTIN_VARIANTS:
            raise ConfigError(f"variants.{name}: {name!r} is built in; pick another name")
        _tuple_of_names([name], "variants")
        for dotted in _as_mapping(sets, f"variants.{name}"):
            _check_set_path(dotted, f"variants.{name}")
    known_variants = list(BUILTIN_VARIANTS) + list(spec.variants)
    for v in spec.axes.variant:
        if v not in known_variants:
            raise ConfigError(f"axes.variant: unknown variant {v!r}; allowed: {', '.join(known_variants)} "
                              "(define new ones under `variants:`)")
    for section, value in _as_mapping(spec.fixed, "fixed").items():
        if section not in TRIAL_SECTIONS:
            raise ConfigError(f"fixed: unknown section {section!r}; allowed: {', '.join(TRIAL_SECTIONS)}")
        _as_mapping(value, f"fixed.{section}")
    model = spec.fixed.get("model", {})
    for key in ("vlsm", "learner"):
        if key in model:
            raise ConfigError(f"fixed.model.{key}: set by the matrix (axes.{key}), remove it here")
    for key in ("dataset", "root"):
        if key in spec.fixed.get("data", {}):
            raise ConfigError(f"fixed.data.{key}: set by the matrix (axes.dataset / data.root), remove it here")
    s = spec.search
    from benchmark.plan.search_space import HP_NAMES, PAPER

    kinds = {p.name: p.kind for p in PAPER}
    for name, value in _as_mapping(s.bounds, "search.bounds").items():
        if name not in HP_NAMES:
            raise ConfigError(f"search.bounds: unknown parameter {name!r}; allowed: {', '.join(HP_NAMES)}")
        ok = isinstance(value, (list, tuple)) and len(value) >= 1
        if ok and kinds[name] != "categorical":
            ok = len(value) == 2 and all(isinstance(v, (int, float)) for v in value) and value[0] <= value[1]
        if not ok:
            raise ConfigError(f"search.bounds.{name}: expected " + (
                "a list of choices" if kinds[name] == "categorical" else "[low, high] with low <= high")
                + f", got {value!r}")
    if s.trials < 1:
        raise ConfigError(f"search.trials: must be at least 1, got {s.trials}")
    if isinstance(spec.select.reseed, bool) or not isinstance(spec.select.reseed, int) or spec.select.reseed < 0:
        raise ConfigError(f"select.reseed: the number of further seeds per cell, an integer >= 0 (0: off), got "
                          f"{spec.select.reseed!r}")
    _check_selection(spec.select)
    if s.n_startup_trials < 0:
        raise ConfigError(f"search.n_startup_trials: must be >= 0, got {s.n_startup_trials}")
    if s.max_concurrent_per_cell is not None and s.max_concurrent_per_cell < 1:
        raise ConfigError("search.max_concurrent_per_cell: must be at least 1 (or null for no limit)")
    from benchmark.plan.search_space import SPACES

    if s.space not in SPACES:
        raise ConfigError(f"search.space: unknown space {s.space!r}; allowed: {', '.join(SPACES)}")
    if spec.resources.cpu < 0 or spec.resources.gpu < 0:
        raise ConfigError("resources: cpu and gpu must be >= 0")
    if spec.execution.max_failures < 0 or spec.execution.checkpoints_to_keep < 1:
        raise ConfigError("execution: max_failures must be >= 0 and checkpoints_to_keep >= 1")
    if spec.execution.grace_period < 1 or not spec.execution.reduction_factor > 1:
        raise ConfigError("execution: grace_period must be >= 1 (epochs) and reduction_factor > 1, got "
                          f"{spec.execution.grace_period} and {spec.execution.reduction_factor}")
    for name in spec.vlsms:
        if name not in spec.axes.vlsm and not any(p[0] == name for p in spec.axes.pairs or ()):
            raise ConfigError(f"vlsms.{name}: {name!r} is not on axes.vlsm {list(spec.axes.vlsm)}")


def _check_selection(select: Selection) -> None:
    """select.by / select.report name a metric column of the trial rows: a typo would select nothing (and
    silently schedule no reruns over seeds)."""
    from benchmark.results.records import METRIC_NAMES
    from trainables.resources import did_you_mean

    for key in ("by", "report"):
        value = getattr(select, key)
        if value not in METRIC_NAMES:
            raise ConfigError(f"select.{key}: unknown metric {value!r}{did_you_mean(value, METRIC_NAMES)}; allowed: "
                              f"{', '.join(METRIC_NAMES)}")
    if select.mode not in ("min", "max"):
        raise ConfigError(f"select.mode: 'min' or 'max', got {select.mode!r}")
