"""The hyperparameter search space of the paper (Table 2) as data, rendered through Optuna define-by-run.

One tuple of `Param` records is the single source: the sweep samples from it, `tunevlseg space` prints it
and the tables code regenerates Table 2 from it. The rows every prompt learner shares (lr, weight decay,
prompt depth) are here; a learner's own rows are declared in its folder (`register_learner(search=...)`)
and gathered from the catalog. Two variants exist:

- `paper`: Table 2 exactly (intermediate dim {32, 64, 96, 128} for CoCoOp and MaPLe).
- `reference`: what the original code actually searched (reference spec §7/§9.6), a learner's
  `reference_search` where it drifted: CoCoOp `choice(32, 129, 32)` -- 32 listed twice, so it is drawn
  twice as often by the random start-up trials -- and MaPLe `range(32, 97, 32)` = {32, 64, 96}.

Integer ranges are inclusive on both ends because they are rendered with `trial.suggest_int`. (Ray's
`tune.randint(1, 11)` would be exclusive of 11 and silently drop depth 11.) The space is rendered
define-by-run, so metric and mode must be given to `OptunaSearch` itself, not only to `TuneConfig`.

No torch here: the tables path imports this module on machines without it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from trainables.catalog import LEARNERS, LearnerCard
from trainables.config import ConfigError
from trainables.hparams import EVERY_PROMPT_LEARNER, LEARNER_CONFIG, Param
from trainables.learners.config import DEPTH_RANGE

__all__ = ["EVERY_PROMPT_LEARNER", "Param"]  # re-exported: defined torch-free in `trainables.hparams`

_ALL = EVERY_PROMPT_LEARNER

# The rows of paper Table 2 every prompt learner shares. The learner-specific rows are declared in each
# learner's folder (`register_learner(..., search=...)`) and follow these.
SHARED: tuple[Param, ...] = (
    Param("lr", "float", "train.lr", _ALL, 1e-5, 5e-3, log=True, label="Learning rate"),
    Param("weight_decay", "float", "train.weight_decay", _ALL, 1e-5, 1e-2, log=True, label="Weight decay"),
    Param("prompt_depth", "int", LEARNER_CONFIG + "prompt_depth", _ALL, *DEPTH_RANGE, label="Prompt depth"),
)


def _gather(own: Callable[[LearnerCard], tuple[Param, ...]]) -> tuple[Param, ...]:
    """SHARED, then every learner's own records in catalog (name) order, the learners beyond the paper (LoRA,
    VLSM-Adapter) after the paper's, as one table: a record two learners
    declare alike (CoCoOp's and MaPLe's intermediate dim) is one row naming both, and a record is listed
    after the others of its name. For the shipped learners this is the row order of paper Table 2."""
    out = list(SHARED)
    # the paper's learners first, then those beyond it (catalog `beyond_paper`): their rows follow the paper's
    for learner in sorted(LEARNERS.names(), key=lambda n: LEARNERS.get(n).beyond_paper):
        for p in own(LEARNERS.get(learner)):
            alike = [i for i, q in enumerate(out)
                     if dataclasses.replace(q, applies_to=()) == dataclasses.replace(p, applies_to=())]
            if alike:
                out[alike[0]] = dataclasses.replace(out[alike[0]], applies_to=out[alike[0]].applies_to + (learner,))
                continue
            last = max((i for i, q in enumerate(out) if q.name == p.name), default=len(out) - 1)
            out.insert(last + 1, p)
    return tuple(out)


def _paper() -> tuple[Param, ...]:
    """Paper Table 2, in its row order."""
    return _gather(lambda card: card.search)


def _reference() -> tuple[Param, ...]:
    """What the original code searched: each learner's `reference_search` where it drifted from Table 2."""
    return _gather(lambda card: card.search if card.reference_search is None else card.reference_search)


_SPACES: dict[str, Callable[[], tuple[Param, ...]]] = {"paper": _paper, "reference": _reference}


def __getattr__(name: str) -> Any:
    """PAPER, REFERENCE, SPACES and HP_NAMES, gathered from the catalog when read (PEP 562), so that a learner
    registered after this import (a test's, a plugin's) is in them too."""
    if name == "PAPER":
        return _paper()
    if name == "REFERENCE":
        return _reference()
    if name == "SPACES":
        return {key: build() for key, build in _SPACES.items()}
    if name == "HP_NAMES":
        # Every hyperparameter name any space can produce: the Parquet `hp_<name>` columns.
        return tuple(dict.fromkeys(p.name for p in _paper()))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class TPESettings:
    """The original's sampler (hydra-optuna-sweeper, `configs/hparams_search/*_optuna.yaml`).

    `consider_prior`, `prior_weight`, `consider_magic_clip` and `warn_independent_sampling` were set to
    what are Optuna 5's defaults anyway (and passing them is deprecated there), so they are recorded
    here but not passed. `constant_liar` is ours: the original ran trials one at a time (n_jobs 1); we run
    several per study at once, and the liar keeps concurrent suggestions apart.
    """

    n_startup_trials: int = 10
    multivariate: bool = True
    constant_liar: bool = True
    consider_prior: bool = True
    prior_weight: float = 1.0
    consider_magic_clip: bool = True
    warn_independent_sampling: bool = True


ORIGINAL_TPE = TPESettings()
ORIGINAL_TRIALS_PER_CELL = 20


def params_for(learner: str, space: str = "paper") -> tuple[Param, ...]:
    """The searched parameters of one learner, in the order it declares them (the shared ones first; the order
    Optuna suggests them in); empty for learners that are not swept (E2E)."""
    try:
        params = _SPACES[space]()
    except KeyError:
        raise ConfigError(f"unknown search space {space!r}; allowed: {', '.join(_SPACES)}") from None
    mine = [p for p in params if learner in p.learners()]
    if learner not in LEARNERS:
        return tuple(mine)
    card = LEARNERS.get(learner)
    own = card.search if space == "paper" or card.reference_search is None else card.reference_search
    declared = [p.name for p in SHARED + own]
    return tuple(sorted(mine, key=lambda p: declared.index(p.name) if p.name in declared else len(declared)))


def narrow(params: Sequence[Param], bounds: dict[str, Any] | None) -> tuple[Param, ...]:
    """Apply a spec's `search.bounds` ({name: [low, high]} or {name: [choices]}) to a learner's params."""
    out = []
    for p in params:
        b = (bounds or {}).get(p.name)
        if b is None:
            out.append(p)
        elif p.kind == "categorical":
            out.append(dataclasses.replace(p, choices=tuple(b)))
        else:
            out.append(dataclasses.replace(p, low=b[0], high=b[1]))
    return tuple(out)


def seed_for(learner: str) -> int:
    """The TPE seed of a learner's study: its catalog entry's (the original's per-learner seed)."""
    return LEARNERS.get(learner).seed


def define_by_run(trial: Any, params: Sequence[Param]) -> None:
    """Optuna define-by-run function: suggests every parameter (conditionals are resolved by the caller,
    which passes only the learner's own parameters, so one study never mixes learners)."""
    for p in params:
        p.suggest(trial)


def make_sampler(seed: int, settings: TPESettings = ORIGINAL_TPE):
    import optuna  # lazy: `tunevlseg plan` and the tables do not need it

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.n_startup_trials,
                                      multivariate=settings.multivariate,
                                      constant_liar=settings.constant_liar)


def apply_values(config: dict[str, Any], params: Sequence[Param], values: dict[str, Any]) -> dict[str, Any]:
    """Write sampled `values` (by param name) into a nested trial config at each param's target path."""
    for p in params:
        if p.name in values:
            set_path(config, p.target, values[p.name])
    return config


def set_path(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted!r}: {key!r} is {child!r}, not a mapping")
        node = child
    node[leaf] = value
