"""The hyperparameter search space of the paper (Table 2) as data, rendered through Optuna define-by-run.

One tuple of `Param` records is the single source: the sweep samples from it, `tunevlseg space` prints it
and the tables code regenerates Table 2 from it. Two variants exist:

- `paper`: Table 2 exactly (intermediate dim {32, 64, 96, 128} for CoCoOp and MaPLe).
- `reference`: what the original code actually searched (reference spec §7/§9.6): CoCoOp
  `choice(32, 129, 32)` -- 32 listed twice, so it is drawn twice as often by the random start-up trials --
  and MaPLe `range(32, 97, 32)` = {32, 64, 96}.

Integer ranges are inclusive on both ends because they are rendered with `trial.suggest_int`. (Ray's
`tune.randint(1, 11)` would be exclusive of 11 and silently drop depth 11.) The space is rendered
define-by-run, so metric and mode must be given to `OptunaSearch` itself, not only to `TuneConfig`.

No torch here: the tables path imports this module on machines without it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from trainables.catalog import LEARNERS, prompt_learners
from trainables.config import ConfigError

# `applies_to` of the parameters every prompt learner is searched over: each learner of the catalog that
# prompts an encoder, including one registered later. E2E prompts nothing and is not swept.
EVERY_PROMPT_LEARNER = ("*",)


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter.

    `target` is the dotted path the sampled value is written to in the nested trial config, e.g.
    `train.lr` or `model.learner_config.prompt_depth`; `name` is the Optuna / Parquet (`hp_<name>`) name.
    `applies_to` names learners, or is EVERY_PROMPT_LEARNER.
    """

    name: str
    kind: Literal["float", "int", "categorical"]
    target: str
    applies_to: tuple[str, ...]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    label: str = ""  # as printed in paper Table 2

    def learners(self) -> tuple[str, ...]:
        """The learners searched over this parameter (EVERY_PROMPT_LEARNER resolved through the catalog: for a
        learner-config field, only the learners whose config has it, so LoRA gets no prompt depth)."""
        if self.applies_to != EVERY_PROMPT_LEARNER:
            return self.applies_to
        if not self.target.startswith(_LC):
            return prompt_learners()
        field = self.target[len(_LC):]
        return tuple(n for n in prompt_learners()
                     if field in {f.name for f in dataclasses.fields(LEARNERS.get(n).config_cls)})

    def domain(self) -> str:
        """Human-readable domain, as in Table 2."""
        if self.kind == "categorical":
            return "{" + ", ".join(_fmt(c) for c in self.choices or ()) + "}"
        lo, hi = _fmt(self.low), _fmt(self.high)
        if self.kind == "int":
            return f"[{lo}, {hi}] integer"
        return f"[{lo}, {hi}]" + (" log-uniform" if self.log else " uniform")

    def suggest(self, trial: Any) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices or ()))

    def example(self) -> Any:
        """A valid value (first choice or lower bound), for checking configs before a sweep."""
        if self.choices:
            return self.choices[0]
        return int(self.low) if self.kind == "int" else self.low

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in (self.choices or ())
        if self.kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            return False
        return self.low <= value <= self.high

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "label": self.label, "kind": self.kind, "target": self.target,
                             "applies_to": list(self.learners())}
        if self.kind == "categorical":
            d["choices"] = list(self.choices or ())
        else:
            d.update(low=self.low, high=self.high, log=self.log)
        return d


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and v != 0 and (abs(v) <= 1e-2 or abs(v) >= 1e4):
        return f"{v:.0e}".replace("e-0", "e-")
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


_ALL = EVERY_PROMPT_LEARNER
_PROJ = ("cocoop", "maple")
_LC = "model.learner_config."

# Paper Table 2, in its row order, then the rows of the learners beyond the paper.
PAPER: tuple[Param, ...] = (
    Param("lr", "float", "train.lr", _ALL, 1e-5, 5e-3, log=True, label="Learning rate"),
    Param("weight_decay", "float", "train.weight_decay", _ALL, 1e-5, 1e-2, log=True, label="Weight decay"),
    Param("prompt_depth", "int", _LC + "prompt_depth", _ALL, 1, 11, label="Prompt depth"),
    Param("intermediate_dim", "categorical", _LC + "intermediate_dim", _PROJ, choices=(32, 64, 96, 128),
          label="Intermediate dimension"),
    Param("use_lora", "categorical", _LC + "use_lora", _PROJ, choices=(True, False), label="Use LoRA"),
    Param("nhead", "categorical", _LC + "nhead", ("shared_attention",), choices=(16, 20, 32),
          label="Number of heads"),
    Param("dropout", "float", _LC + "dropout", ("shared_attention",), 0.1, 0.55, label="Dropout"),
    Param("dim_feedforward", "categorical", _LC + "dim_feedforward", ("shared_attention",),
          choices=(1280, 1420), label="Feed-forward dimension"),
    Param("norm_first", "categorical", _LC + "norm_first", ("shared_attention",), choices=(True, False),
          label="LayerNorm first"),
    Param("shared_dim", "categorical", _LC + "shared_dim", ("shared_separate",), choices=(32, 64),
          label="Shared dimension"),
    # Beyond the paper (LoRA, VLSM-Adapter: `beyond_paper` in their catalog entries; Table 2 marks them).
    # CLIP-LoRA's own setting (rank 2, alpha 1, dropout 0.25) and VLSM-Adapter's dense bottleneck (64) lie
    # inside these domains.
    Param("lora_rank", "categorical", _LC + "rank", ("lora",), choices=(2, 4, 8, 16), label="LoRA rank"),
    Param("lora_alpha", "categorical", _LC + "alpha", ("lora",), choices=(1, 2, 4, 8, 16), label="LoRA alpha"),
    Param("lora_dropout", "float", _LC + "dropout", ("lora",), 0.0, 0.5, label="LoRA dropout"),
    Param("adapter_bottleneck", "categorical", _LC + "bottleneck", ("adapter",), choices=(16, 32, 64, 128),
          label="Adapter bottleneck"),
)


def _reference() -> tuple[Param, ...]:
    out: list[Param] = []
    for p in PAPER:
        if p.name != "intermediate_dim":
            out.append(p)
            continue
        # The original's drifted choices; kept verbatim (incl. the duplicate 32) to reproduce its sampling.
        out.append(Param(p.name, p.kind, p.target, ("cocoop",), choices=(32, 129, 32), label=p.label))
        out.append(Param(p.name, p.kind, p.target, ("maple",), choices=(32, 64, 96), label=p.label))
    return tuple(out)


REFERENCE: tuple[Param, ...] = _reference()
SPACES: dict[str, tuple[Param, ...]] = {"paper": PAPER, "reference": REFERENCE}

# Every hyperparameter name any space can produce: the Parquet `hp_<name>` columns.
HP_NAMES: tuple[str, ...] = tuple(dict.fromkeys(p.name for p in PAPER))


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
    """The searched parameters of one learner; empty for learners that are not swept (E2E)."""
    try:
        params = SPACES[space]
    except KeyError:
        raise ConfigError(f"unknown search space {space!r}; allowed: {', '.join(SPACES)}") from None
    return tuple(p for p in params if learner in p.learners())


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
