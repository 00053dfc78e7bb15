"""The torch-free catalog of learners and VLSMs: what both the driver and the trials know about them.

Each learner and each VLSM is one folder (`trainables/learners/<name>/`, `trainables/vlsm/<name>/`, the
layout of peft's `tuners/<method>/`). The folder's `__init__.py` imports no torch: it holds the config
dataclass and one `register_learner` / `register_vlsm` call with the static facts (display name,
modalities, TPE seed, image size, ...) and a lazy "module:attribute" reference to the torch code beside it.
The catalog finds the folders itself, so adding one is the whole change: no list elsewhere names it.

The driver (`tunevlseg plan`, `space`, `tables`, `estimate`) reads only this catalog and never imports torch;
`trainables.model` resolves the lazy references when a trial builds its model.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Union

from trainables.registry import Registry

if TYPE_CHECKING:
    from trainables.hparams import Param

TEXT = "text"
VISION = "vision"
# A learner's cost on one VLSM: names of `VLSMCost` fields it pays, and numbers: GFLOP per image it pays in the
# image encoder where that VLSM's card has no field for it (LoRA in CRIS's attention pool). Either makes the
# image side trainable, so the frozen-feature cache skips nothing for it.
CostTerms = tuple[Union[str, float], ...]


def _load(ref: str) -> Any:
    """'package.module:attribute' -> the attribute (imports the module, i.e. torch, on first use)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class LearnerCard:
    """Static facts of one context learner.

    `model`: "module:Class" of its torch module, None for the E2E baseline (no learner, nothing frozen).
    `seed`: the TPE seed the original used for this learner's study (reference spec §7); 0 when it had none.
    A learner that prompts at least one encoder is a prompt learner: it is swept over the search space's
    common parameters (`benchmark.plan.search_space`); one that prompts none (E2E) is run once, unswept.
    `search`: its own searched fields (paper Table 2), searched after the common ones; `reference_search`:
    what the original code searched instead, where that drifted from the paper (the `reference` space).
    `cost`: what its training step pays on top of the VLSM's frozen forward, as names of `VLSMCost` fields
    (`LEARNER_COSTS`) and image-side GFLOP numbers (`CostTerms`), either one tuple for every VLSM or a mapping
    {VLSM name: tuple} where what it changes differs by VLSM (`cost_terms`); None, or a VLSM the mapping
    does not name: unpriced, `plan --estimate` says so instead of guessing.
    `original_upsampler`: {VLSM name: upsampler combine mode} where the original's wrapper for this learner
    on that VLSM combined the upsampler other than "residual" (`ModelConfig.upsampler_combine: original`).
    """

    name: str
    display_name: str  # as printed in the paper's tables
    config_cls: type
    modalities: frozenset[str]
    model: str | None
    seed: int = 0
    search: tuple[Param, ...] = ()
    reference_search: tuple[Param, ...] | None = None  # None: as `search`
    cost: CostTerms | Mapping[str, CostTerms] | None = None
    # True: not one of the paper's learners (LoRA, adapters): tables list it after the paper's rows, marked.
    beyond_paper: bool = False
    original_upsampler: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def cost_terms(self, vlsm: str) -> CostTerms | None:
        """Its cost terms on `vlsm` (`CostTerms`); None: unpriced there."""
        if isinstance(self.cost, Mapping):
            return self.cost.get(vlsm)
        return self.cost

    @property
    def module_cls(self) -> type | None:
        return None if self.model is None else _load(self.model)

    @property
    def prompted(self) -> bool:
        return bool(self.modalities)


@dataclass(frozen=True)
class VLSMCost:
    """Analytic GFLOP per training image at the card's `image_size`: what `plan --estimate` assumes until a run
    measures seconds per image. A learner pays `forward` plus the fields its card's `cost` names.

    `text_grad` / `vision_grad`: activation gradients back through what text / vision prompts reach (None:
    the VLSM takes no vision prompts); `weight_grad`: E2E's weight gradients on top; `image_features`: what an
    image-conditioned learner (CoCoOp's meta-net) adds. `cached_image_pass`: what the frozen-feature cache
    skips per cached image for a learner that leaves the image encoder alone; `cached_image_features`: the
    same for an image-conditioned one (the pass that also gives its pooled embedding).
    """

    forward: float
    text_grad: float
    vision_grad: float | None
    weight_grad: float
    image_features: float
    cached_image_pass: float
    cached_image_features: float


# The `VLSMCost` fields a learner's `cost` may name.
LEARNER_COSTS = ("text_grad", "vision_grad", "weight_grad", "image_features")


@dataclass(frozen=True)
class VLSMCard:
    """Static facts of one VLSM; calling the card builds the adapter (`factory(weights=..., config=..., **options)`).

    `modalities`: the encoders that accept prompts. `image_size`: default input resolution (the adapter may
    take another from its weights). `max_prompt_depth`: the layers of its full-size encoders that can take
    prompts. The adapter's runtime `VLSMSpec` must agree on the modalities (checked by `trainables.model`).
    `cost`: its analytic GFLOP for the estimate; None: unpriced, `plan --estimate` says so instead of guessing.
    `mean` / `std`: the per-channel normalisation its pretrained encoders expect (the one place they are
    written; the adapter's `VLSMSpec` carries them to the data pipeline). `converter`: "module:function" of
    its checkpoint converter, if it has one (`tunevlseg convert-cris` calls CRIS's through `convert`). `mini`:
    the module of its mini model's architecture and pretraining hooks (`trainables.mini.pretrain`), if any.
    """

    name: str
    display_name: str
    modalities: frozenset[str]
    factory: str
    image_size: int
    max_prompt_depth: int
    cost: VLSMCost | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    converter: str | None = None
    mini: str | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _load(self.factory)(*args, **kwargs)

    def convert(self, *args: Any, **kwargs: Any) -> Any:
        """Run the VLSM's checkpoint converter (imports its torch code on first use)."""
        if self.converter is None:
            raise ValueError(f"VLSM {self.name!r} registers no checkpoint converter")
        return _load(self.converter)(*args, **kwargs)

    @property
    def config_dir(self) -> Path:
        """`configs/` of the VLSM's folder (the package holding its factory), found without importing torch."""
        package = self.factory.partition(":")[0].rpartition(".")[0]
        return Path(importlib.util.find_spec(package).origin).parent / "configs"


def _discover(package: str) -> Callable[[], None]:
    """Import every sub-package (one folder per learner / VLSM) of `package`; their `__init__` registers."""

    def run() -> None:
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.ispkg:
                importlib.import_module(f"{package}.{info.name}")

    return run


LEARNERS: Registry[LearnerCard] = Registry("learner", discover=_discover("trainables.learners"))
VLSMS: Registry[VLSMCard] = Registry("VLSM", discover=_discover("trainables.vlsm"))


def register_learner(name: str, display_name: str, config_cls: type, modalities: frozenset[str] | set[str],
                     model: str | None, seed: int = 0, search: tuple[Param, ...] = (),
                     reference_search: tuple[Param, ...] | None = None,
                     cost: CostTerms | Mapping[str, CostTerms] | None = None, beyond_paper: bool = False,
                     original_upsampler: Mapping[str, str] | None = None) -> LearnerCard:
    def own(params: tuple[Param, ...]) -> tuple[Param, ...]:
        for p in params:
            if p.applies_to not in ((), (name,)):
                raise ValueError(f"learner {name!r}: search parameter {p.name!r} names {p.applies_to}; a learner "
                                 "declares only its own parameters (leave applies_to empty)")
        return tuple(dataclasses.replace(p, applies_to=(name,)) for p in params)

    def terms(t: CostTerms) -> CostTerms:
        unknown = sorted({x for x in t if isinstance(x, str)} - set(LEARNER_COSTS))
        if unknown:
            raise ValueError(f"learner {name!r}: cost names {', '.join(unknown)}; allowed: {', '.join(LEARNER_COSTS)} "
                             "(or a number: image-side GFLOP per image)")
        return tuple(t)

    if isinstance(cost, Mapping):
        cost = {vlsm: terms(t) for vlsm, t in cost.items()}
    elif cost is not None:
        cost = terms(cost)
    return LEARNERS.register(name, LearnerCard(
        name, display_name, config_cls, frozenset(modalities), model, seed, own(search),
        None if reference_search is None else own(reference_search), cost, beyond_paper,
        dict(original_upsampler or {})))


def register_vlsm(name: str, display_name: str, modalities: frozenset[str] | set[str], factory: str,
                  image_size: int, max_prompt_depth: int, cost: VLSMCost | None = None,
                  mean: tuple[float, float, float] | None = None,
                  std: tuple[float, float, float] | None = None, converter: str | None = None,
                  mini: str | None = None) -> VLSMCard:
    return VLSMS.register(name, VLSMCard(name, display_name, frozenset(modalities), factory, image_size,
                                         max_prompt_depth, cost, mean, std, converter, mini))


def is_viable(learner: str, vlsm_modalities: frozenset[str]) -> bool:
    """A learner fits a VLSM when every encoder it prompts exists on that VLSM (`VLSMCard.modalities`)."""
    return LEARNERS.get(learner).modalities <= vlsm_modalities


def prompt_learners() -> tuple[str, ...]:
    """The learners swept over the search space (every learner that prompts an encoder; not E2E)."""
    return tuple(n for n in LEARNERS.names() if LEARNERS.get(n).prompted)


def learner_display(name: str) -> str:
    return LEARNERS.get(name).display_name if name in LEARNERS else name


def vlsm_display(name: str) -> str:
    return VLSMS.get(name).display_name if name in VLSMS else name
