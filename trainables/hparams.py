"""`Param`: one searched hyperparameter, as data (torch-free).

Defined on the trainables side so that a learner folder's `__init__` can declare its own searched fields
(`register_learner(..., search=(Param(...), ...))`) without importing the driver. The search space
(`benchmark.plan.search_space`) gathers these records with the parameters every prompt learner shares.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from trainables.catalog import LEARNERS, prompt_learners

# `applies_to` of the parameters every prompt learner is searched over: each learner of the catalog that
# prompts an encoder, including one registered later. E2E prompts nothing and is not swept.
EVERY_PROMPT_LEARNER = ("*",)
# Target prefix of a learner's own fields: a spec's `model.learner_config`, i.e. the learner's config dataclass.
LEARNER_CONFIG = "model.learner_config."


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter.

    `target` is the dotted path the sampled value is written to in the nested trial config, e.g.
    `train.lr` or `model.learner_config.prompt_depth`; `name` is the Optuna / Parquet (`hp_<name>`) name.
    `applies_to` names learners, or is EVERY_PROMPT_LEARNER; a learner folder leaves it empty and
    `register_learner` fills in the learner's name.
    """

    name: str
    kind: Literal["float", "int", "categorical"]
    target: str
    applies_to: tuple[str, ...] = ()
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
        if not self.target.startswith(LEARNER_CONFIG):
            return prompt_learners()
        field = self.target[len(LEARNER_CONFIG):]
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
