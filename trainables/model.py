"""A frozen VLSM + a context learner + the learnable upsampler, as one module (`PromptedVLSM`).

    model = build_model({"vlsm": "clipseg", "weights": "CIDAS/clipseg-rd64", "learner": "maple",
                         "learner_config": {"prompt_depth": 6}})
    batch = model.tokenize(["polyp."]) ; logits = model(pixel_values, **batch)     # (N, 1, S, S)
    model.save_artifact("out/prompts")                       # trainable tensors + config, never the VLSM

`build_model` is the only place that freezes: everything of the VLSM is frozen and kept in eval mode,
then the learner and upsampler are created (so they alone train). The E2E baseline (`learner: e2e`)
freezes nothing and has neither learner nor upsampler.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from trainables.catalog import LEARNERS, VISION, VLSMS, LearnerCard, is_viable
from trainables.config import ConfigError, from_dict
from trainables.learners.base import ContextLearner
from trainables.protocol import CHECKPOINT_ARTIFACT
from trainables.trial_config import DEFAULT_RESIZE
from trainables.upsampler import COMBINE_MODES, ResidualUpsampler
from trainables.vlsm.base import VLSMAdapter, VLSMSpec

ARTIFACT_CONFIG = "tunevlseg.json"
ARTIFACT_TENSORS = "trainable.safetensors"
ARTIFACT_FORMAT = "tunevlseg-prompt-artifact"
ARTIFACT_VERSION = 1

@dataclass
class ModelConfig:
    """The `model` block of a trial config.

    vlsm: registered VLSM name. weights: HF hub id or local checkpoint directory; None = random init of
    `vlsm_config` (a shipped config name or a dict), offline. vlsm_options: adapter flags.
    learner / learner_config: registered learner name and its config fields.
    upsampler: add the learnable upsampler (paper §5; false = Table 5 ablation; ignored by e2e).
    upsampler_combine: "residual" (paper: (1-ρ)·head + ρ·up), "sum" (head + up), "unused" (created,
    counted, never run) or "original" (what the original did for this pair: unused for CoOp/CoCoOp on
    CLIPSeg, sum for VPT, residual otherwise).
    seed: when set, the learner and upsampler are initialised from this seed whatever the global RNG.
    """

    vlsm: str = "clipseg"
    weights: str | None = None
    vlsm_config: str | dict | None = None
    vlsm_options: dict = field(default_factory=dict)
    learner: str = "coop"
    learner_config: dict = field(default_factory=dict)
    upsampler: bool = True
    upsampler_combine: str = "residual"
    seed: int | None = None

    def __post_init__(self):
        for name in ("vlsm_options", "learner_config"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"model {name}: expected a mapping of key: value, got {getattr(self, name)!r}")
        allowed = (*COMBINE_MODES, "original")
        if self.upsampler_combine not in allowed:
            raise ConfigError(f"model upsampler_combine: {self.upsampler_combine!r} is not allowed; "
                              f"allowed: {', '.join(allowed)}")

    def combine_mode(self) -> str:
        if self.upsampler_combine == "original":
            # What the original did per (VLSM, learner), declared by the learner's card (reference §2, §9.1,
            # §9.2); every other pair used the paper's residual combination.
            return LEARNERS.get(self.learner).original_upsampler.get(self.vlsm, "residual")
        return self.upsampler_combine


def resolve_learner_config(cfg: ModelConfig):
    entry = LEARNERS.get(cfg.learner)
    return entry, from_dict(entry.config_cls, cfg.learner_config, where=f"learner {cfg.learner!r}")


# The last frozen VLSM built in this process. A reused Ray worker (`execution.reuse_actors: true`) runs
# trial after trial on the same frozen weights; loading them again is most of a trial's fixed cost
# (BENCHMARKS.md). A frozen VLSM is never modified (requires_grad off, eval mode), so sharing it is safe.
# TUNEVLSEG_VLSM_CACHE=0 turns this off.
_FROZEN: dict[str, VLSMAdapter] = {}


def _build_vlsm(cfg: ModelConfig) -> VLSMAdapter:
    return VLSMS.get(cfg.vlsm)(weights=cfg.weights, config=cfg.vlsm_config, **cfg.vlsm_options)


def _frozen_vlsm(cfg: ModelConfig) -> VLSMAdapter:
    if os.environ.get("TUNEVLSEG_VLSM_CACHE", "1") == "0":
        return _build_vlsm(cfg)
    key = json.dumps([cfg.vlsm, cfg.weights, cfg.vlsm_config, cfg.vlsm_options], sort_keys=True, default=str)
    vlsm = _FROZEN.get(key)
    if vlsm is None:
        _FROZEN.clear()  # keep one: a GPU worker should not hold several frozen backbones
        vlsm = _FROZEN[key] = _build_vlsm(cfg)
    # Left where the previous trial put it (its GPU): moving ~600 MB down and up again at every trial
    # start would be most of what is left of a reused worker's fixed cost. The learner does not depend on
    # where the VLSM is (it is made on the CPU from the CPU RNG), and `build_model` moves it alongside.
    return vlsm.requires_grad_(False).eval()


def _private_tree(vlsm: VLSMAdapter) -> VLSMAdapter:
    """A copy of `vlsm`'s modules that shares its (frozen) parameters and buffers: a learner may then replace
    or wrap modules of the copy (LoRA, adapters) without touching the VLSM kept for other trials, and
    without a second copy of the weights."""
    memo = {id(t): t for t in (*vlsm.parameters(), *vlsm.buffers())}
    return copy.deepcopy(vlsm, memo)


def build_model(cfg: ModelConfig | Mapping[str, Any]) -> "PromptedVLSM":
    if not isinstance(cfg, ModelConfig):
        cfg = from_dict(ModelConfig, cfg, where="model")
    entry, learner_cfg = resolve_learner_config(cfg)  # config errors before the (slow) VLSM build
    # E2E trains the VLSM itself: always a fresh copy.
    vlsm = _build_vlsm(cfg) if entry.model is None else _frozen_vlsm(cfg)
    missing = entry.modalities - vlsm.spec.modalities
    if missing:
        viable = [n for n in LEARNERS.names() if is_viable(n, vlsm.spec.modalities)]
        raise ConfigError(f"learner {cfg.learner!r} prompts the {'/'.join(sorted(missing))} encoder, which "
                          f"{cfg.vlsm} does not have; viable learners for {cfg.vlsm}: {', '.join(viable)}")
    model = PromptedVLSM(cfg, vlsm, entry, learner_cfg)
    device = next(vlsm.parameters()).device
    # A kept VLSM may already be on a GPU: the model is put on one device, and an earlier model sharing
    # that VLSM is not disturbed (moving the shared VLSM back to the CPU would move it under that model too).
    return model if device.type == "cpu" else model.to(device)


@contextlib.contextmanager
def _seeded(seed: int | None):
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class PromptedVLSM(nn.Module):
    def __init__(self, config: ModelConfig, vlsm: VLSMAdapter, entry: LearnerCard, learner_config):
        super().__init__()
        self.config = config
        self.entry = entry
        self.learner_config = learner_config
        self.vlsm = vlsm
        self.learner: ContextLearner | None = None
        self.upsampler: ResidualUpsampler | None = None
        self.frozen = entry.model is not None
        if self.frozen and entry.module_cls.attaches:
            # LoRA, adapters: their modules go into a private module tree over the shared frozen weights.
            vlsm = self.vlsm = _private_tree(vlsm)
        if not self.frozen:  # E2E: the whole VLSM trains, nothing is added
            vlsm.requires_grad_(True)
            if not getattr(learner_config, "train_encoders", True):
                try:
                    encoders = vlsm.encoder_modules()
                except NotImplementedError:
                    raise ConfigError(f"learner 'e2e' train_encoders: false is not supported for {config.vlsm}; "
                                      "allowed: true") from None
                for module in encoders:
                    module.requires_grad_(False)
            vlsm.train(self.training)
            return
        vlsm.requires_grad_(False)
        vlsm.eval()
        with _seeded(config.seed):
            self.learner = entry.module_cls(learner_config, vlsm.spec, vlsm.embed_tokens)
            if self.learner.attaches:  # LoRA, adapters: change the (private) encoders instead of prompting
                self.learner.attach(vlsm)
            if config.upsampler:
                self.upsampler = ResidualUpsampler(vlsm.make_upsampler(), config.combine_mode())

    @property
    def spec(self) -> VLSMSpec:
        return self.vlsm.spec

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.vlsm.tokenize(texts)

    def tokenize_batch(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The distinct texts tokenized, plus `text_index` (N,) giving each text's row: the text encoder then
        runs once per distinct prompt. Found on the host, from the strings, so no device sync is needed."""
        rows = {t: i for i, t in enumerate(dict.fromkeys(texts))}
        return {**self.vlsm.tokenize(list(rows)), "text_index": torch.tensor([rows[t] for t in texts])}

    @property
    def frozen_image_side(self) -> bool:
        """True when nothing trainable reaches the image encoder (a frozen VLSM and a learner that does not
        prompt vision: CoOp, CoCoOp) and the adapter exposes its image side: the image features are then a
        function of the image alone, which the frozen-feature cache (`trainables.feature_cache`) relies on."""
        return (self.frozen and VISION not in self.entry.modalities
                and (self.learner is None or VISION not in self.learner.modified)
                and type(self.vlsm).image_side is not VLSMAdapter.image_side)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, text_index: torch.Tensor | None = None,
                image_side: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """Logits (N, 1, S, S) for images (N, 3, S, S) and tokenized prompts (N, L), or the batch's distinct
        prompts (T, L) with `text_index` (N,) giving each image's row (see `tokenize_batch`). `image_side`:
        the adapter's frozen image features of these images, from the frozen-feature cache."""
        prompts = None
        if self.learner is not None:
            # An image-conditioned learner is handed to the adapter, which calls it with the features of its
            # own frozen image pass (one pass per batch).
            prompts = self.learner if self.learner.needs_image_features else self.learner()
        extra = {} if image_side is None else {"image_side": image_side}
        out = self.vlsm(pixel_values, input_ids, attention_mask, prompts, text_index=text_index, **extra)
        return out.logits if self.upsampler is None else self.upsampler(out.logits, out.tap)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:  # a frozen VLSM stays in eval mode (e.g. CRIS BatchNorm statistics, reference §5.9)
            self.vlsm.eval()
            if self.learner is not None:  # except what a learner attached to it (LoRA dropout)
                self.learner.train(mode)
        return self

    # -- parameters ------------------------------------------------------------------------------------------

    def named_trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def named_state_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """What training changes: the trainable parameters, plus every buffer when the VLSM itself trains
        (E2E: BatchNorm running statistics move with the weights; a frozen VLSM stays in eval mode and its
        buffers never change). Checkpoints, the best-epoch state and artifacts store exactly these."""
        tensors: list[tuple[str, torch.Tensor]] = list(self.named_trainable_parameters())
        if not self.frozen:
            tensors += [(n, b) for n, b in self.named_buffers() if b.is_floating_point() or n.endswith("num_batches_tracked")]
        return tensors

    def count_parameters(self) -> tuple[int, int]:
        """(trainable, frozen) parameter counts."""
        trainable = sum(p.numel() for _, p in self.named_trainable_parameters())
        return trainable, sum(p.numel() for p in self.parameters()) - trainable

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups (reference §5.2): Linear/Conv weights and `*proj_weight` decay; biases, norms,
        embeddings, context vectors and the residual ratio do not. Frozen parameters are left out."""
        decay, no_decay = [], []
        for module_name, module in self.named_modules():
            for name, p in module.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                weight = name == "weight" and isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))
                (decay if weight or name.endswith("proj_weight") else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": float(weight_decay), "name": "decay"},
                  {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
        return [g for g in groups if g["params"]]

    def describe(self) -> dict[str, Any]:
        trainable, frozen = self.count_parameters()
        by_part: dict[str, int] = {}
        attached = {id(p) for m in (self.learner.attached if self.learner is not None else []) for p in m.parameters()}
        for name, p in self.named_trainable_parameters():
            part = "learner" if id(p) in attached else name.split(".")[0]
            by_part[part] = by_part.get(part, 0) + p.numel()
        return {
            "vlsm": self.config.vlsm, "learner": self.config.learner, "display_name": self.entry.display_name,
            "modalities": sorted(self.entry.modalities), "vlsm_modalities": sorted(self.spec.modalities),
            # the encoders a learner changed by attaching modules (LoRA, adapters); empty for prompt learners
            "attached_to": sorted(self.learner.modified) if self.learner is not None else [],
            "learner_config": dataclasses.asdict(self.learner_config),
            "upsampler": None if self.upsampler is None else self.upsampler.mode,
            "trainable_params": trainable, "frozen_params": frozen, "trainable_by_part": by_part,
            "max_prompt_depth": self.spec.max_prompt_depth, "image_size": self.spec.image_size,
        }

    # -- artifacts -------------------------------------------------------------------------------------------

    # The prompt `tunevlseg predict` uses when given none: the artifact's recorded dataset prompt, if any.
    default_prompt: str | None = None

    def _artifact_meta(self) -> dict[str, Any]:
        spec = dataclasses.asdict(self.spec)
        spec["modalities"] = sorted(spec["modalities"])
        return {
            "format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION,
            "model": dataclasses.asdict(self.config),
            "learner_config": dataclasses.asdict(self.learner_config),
            "vlsm_spec": json.loads(json.dumps(spec)),
            "tensors": {n: list(p.shape) for n, p in self.named_state_tensors()},
            "trainable_params": self.count_parameters()[0],
            "versions": {"torch": torch.__version__},
        }

    def save_artifact(self, directory: str | Path, data: Mapping[str, Any] | None = None) -> Path:
        """Write `trainable.safetensors` (trainable tensors only) and `tunevlseg.json` (the config). `data`
        records what the prompt was tuned on, e.g. {"dataset": "kvasir", "prompt": "polyp."}."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {n: p.detach().cpu().contiguous() for n, p in self.named_state_tensors()}
        save_file(tensors, str(out / ARTIFACT_TENSORS), metadata={"format": ARTIFACT_FORMAT})
        meta = self._artifact_meta()
        if data:
            meta["data"] = dict(data)
        (out / ARTIFACT_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return out

    def load_artifact(self, directory: str | Path) -> "PromptedVLSM":
        """Load the tensors of an artifact saved by a model of the same VLSM, learner and config."""
        from safetensors.torch import load_file

        directory = Path(directory)
        meta = read_artifact_config(directory)
        mine = self._artifact_meta()
        where = f"artifact {directory}"
        for key, label in (("vlsm", "VLSM"), ("learner", "learner")):
            if meta["model"].get(key) != mine["model"][key]:
                raise ConfigError(f"{where}: {label} is {meta['model'].get(key)!r} but this model's is "
                                  f"{mine['model'][key]!r}; build the model with {key}={meta['model'].get(key)!r}")
        diff = [k for k in sorted(set(meta["learner_config"]) | set(mine["learner_config"]))
                if meta["learner_config"].get(k) != mine["learner_config"].get(k)]
        if diff:
            raise ConfigError(f"{where}: learner config differs in " + ", ".join(
                f"{k} (artifact {meta['learner_config'].get(k)!r}, model {mine['learner_config'].get(k)!r})"
                for k in diff))
        for key in ("upsampler", "upsampler_combine"):
            if meta["model"].get(key) != mine["model"][key]:
                raise ConfigError(f"{where}: {key} is {meta['model'].get(key)!r} but this model's is "
                                  f"{mine['model'][key]!r}")
        for key in ("text_width", "vision_width", "image_feature_dim"):
            if meta["vlsm_spec"].get(key) != mine["vlsm_spec"][key]:
                raise ConfigError(f"{where}: VLSM {key} is {meta['vlsm_spec'].get(key)} but this model's is "
                                  f"{mine['vlsm_spec'][key]} (another {mine['model']['vlsm']} architecture)")
        if meta["model"].get("weights") != mine["model"]["weights"]:
            warnings.warn(f"{where} was trained with weights {meta['model'].get('weights')!r}, this model uses "
                          f"{mine['model']['weights']!r}", stacklevel=2)
        try:
            tensors = load_file(str(directory / ARTIFACT_TENSORS))  # safetensors: plain tensors, never unpickles
        except FileNotFoundError:
            raise FileNotFoundError(f"artifact {directory}: {ARTIFACT_TENSORS} is missing; point --artifact at a "
                                    "complete artifact (a trial's last checkpoint_*/artifact)") from None
        except Exception as e:  # noqa: BLE001 - SafetensorError (corrupt, truncated), OSError
            raise ConfigError(f"artifact {directory}: {ARTIFACT_TENSORS} is corrupt or truncated "
                              f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}); use another "
                              "checkpoint of the trial or rerun it") from None
        params = dict(self.named_state_tensors())
        missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        if missing or unexpected:
            raise ConfigError(f"{where}: tensors do not match this model (missing: {', '.join(missing) or '-'}; "
                              f"unexpected: {', '.join(unexpected) or '-'})")
        for name, p in params.items():
            if tensors[name].shape != p.shape:
                raise ConfigError(f"{where}: tensor {name} has shape {tuple(tensors[name].shape)}, this model "
                                  f"expects {tuple(p.shape)}")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(tensors[name].to(p.device, p.dtype))
        return self


def find_artifact(path: str | Path) -> Path:
    """The artifact directory for `path`: an artifact itself, a trial checkpoint holding `artifact/`, or a
    Ray Tune trial directory (its newest checkpoint with an artifact)."""
    path = Path(path).expanduser()
    if (path / ARTIFACT_CONFIG).is_file():
        return path
    if (path / CHECKPOINT_ARTIFACT / ARTIFACT_CONFIG).is_file():
        return path / CHECKPOINT_ARTIFACT
    found = sorted(path.glob(f"checkpoint_*/{CHECKPOINT_ARTIFACT}/{ARTIFACT_CONFIG}"))
    if found:
        return found[-1].parent  # checkpoint_000007 sorts after checkpoint_000006
    if not path.exists():
        raise FileNotFoundError(f"artifact {path} does not exist")
    raise FileNotFoundError(f"no tuned-prompt artifact in {path}: pass an artifact directory (holding "
                            f"{ARTIFACT_CONFIG}), a trial checkpoint or a trial directory of a finished trial")


def read_artifact_config(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    for name in (ARTIFACT_CONFIG, ARTIFACT_TENSORS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"artifact {directory}: missing {name} (expected a directory written by "
                                    "PromptedVLSM.save_artifact)")
    try:
        meta = json.loads((directory / ARTIFACT_CONFIG).read_text())
    except ValueError as e:
        raise ConfigError(f"artifact {directory}: {ARTIFACT_CONFIG} is corrupt ({e}); use another checkpoint of the "
                          "trial or rerun it") from None
    if meta.get("format") != ARTIFACT_FORMAT or meta.get("version") != ARTIFACT_VERSION:
        raise ConfigError(f"artifact {directory}: {ARTIFACT_CONFIG} is not a {ARTIFACT_FORMAT} v{ARTIFACT_VERSION} "
                          f"file (format {meta.get('format')!r}, version {meta.get('version')!r})")
    return meta


def build_from_artifact(directory: str | Path, **overrides) -> PromptedVLSM:
    """Rebuild the model an artifact came from and load its tensors. `directory`: see `find_artifact`.
    `overrides` replace ModelConfig fields, typically `weights=` when the frozen checkpoint lives elsewhere
    on this machine."""
    directory = find_artifact(directory)
    meta = read_artifact_config(directory)
    model = build_model({**meta["model"], **overrides}).load_artifact(directory)
    model.default_prompt = (meta.get("data") or {}).get("prompt")
    # how its images were resized to S x S in training (data.resize); predict resizes new images the same way
    model.input_resize = (meta.get("data") or {}).get("resize", DEFAULT_RESIZE)
    return model
