"""Reading CRIS and OpenAI CLIP weights safely, validating every key and shape before anything is loaded.

Three inputs are accepted:
- the community CRIS checkpoint (`torch.save` of `{"state_dict": DataParallel state dict, ...}`, keys
  `module.backbone.…`) or an already stripped plain state dict (the original `process_cris_checkpoint.py` output);
- a converted safetensors file (what `tunevlseg convert-cris` writes);
- OpenAI's CLIP `RN50.pt` (a TorchScript archive) or a plain state dict of it, for the backbone only.

Safety: pickles are read with `torch.load(weights_only=True)` (plus numpy scalars, which old training scripts
store in checkpoint metadata and which cannot run code). `torch.load` refuses TorchScript archives under
`weights_only`, and `torch.jit.load` would deserialize and compile the archive's code, so TorchScript archives
are read by a small restricted unpickler that only rebuilds tensors from the archive's `data.pkl` and never
touches `code/`. Anything else a file needs is refused with the global's name.

Validation is complete before loading: a `KeyReport` lists missing, unexpected and mismatched keys, and the
model is only touched when the report is clean, so a refused file never leaves a model half-loaded.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from trainables.config import ConfigError

FORMAT_TAG = "tunevlseg-cris"
# Keys OpenAI's CLIP archives carry besides the weights (OpenAI's own `build_model` drops them too).
CLIP_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
# Parts of our backbone that OpenAI's RN50 does not have: CRIS's attention-pool residual ("connect") and
# BatchNorm batch counters (absent from OpenAI's archive, unused in eval mode).
CLIP_MAY_MISS = ("visual.attnpool.connect.",)


class CheckpointError(ConfigError):
    """A weights file that cannot be used; the message names the file and what is wrong."""

    def __init__(self, message: str, report: "KeyReport | None" = None):
        super().__init__(message)
        self.report = report


@dataclass
class KeyReport:
    """Outcome of matching a state dict against a model: every key problem, not just the first."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, str]] = field(default_factory=list)  # (key, "checkpoint X vs model Y")

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def lines(self, limit: int | None = None) -> list[str]:
        out: list[str] = []
        groups = [
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("mismatched", [f"{k}: {what}" for k, what in self.mismatched]),
        ]
        for title, items in groups:
            if not items:
                continue
            out.append(f"{title} keys ({len(items)}):")
            shown = items if limit is None else items[:limit]
            out += [f"  {item}" for item in shown]
            if len(shown) < len(items):
                out.append(f"  ... and {len(items) - len(shown)} more")
        return out

    def summary(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing (first: {self.missing[0]})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected (first: {self.unexpected[0]})")
        if self.mismatched:
            k, what = self.mismatched[0]
            parts.append(f"{len(self.mismatched)} mismatched (first: {k}: {what})")
        return "; ".join(parts) or "all keys match"


# --------------------------------------------------------------------------------------------------------
# Reading files


def read_tensors(path: str | os.PathLike) -> dict[str, Any]:
    """Everything a weights file holds, read without running code. Returns the unpickled object for torch
    pickles (a dict), a flat {key: tensor} dict for safetensors and TorchScript archives."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if _looks_like_safetensors(path):
        return _read_safetensors(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                if any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in names):
                    return _read_torchscript(zf, path)
        except zipfile.BadZipFile as e:
            raise CheckpointError(f"{path}: damaged zip archive ({e}); re-download the file") from None
    return _torch_load_safely(path)


def _looks_like_safetensors(path: Path) -> bool:
    # safetensors = 8-byte little-endian header length + a JSON header starting with '{'
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= path.stat().st_size - 8


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e}); it may be truncated") from None


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e}); it may be truncated") from None


def _numpy_safe_globals() -> list:
    """numpy scalars/dtypes (epoch, IoU in training checkpoints): pure data, safe to rebuild."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch's usual installs
        return []
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    allowed: list = [np.dtype, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    allowed += [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return allowed


def _first_reason(text: str) -> str:
    # torch wraps unpickler errors in several lines of advice; keep the line that says what went wrong
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "unknown error")


def _is_allowed_numpy(name: str) -> bool:
    return name in ("numpy.dtype", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar") or (
        name.startswith("numpy.dtypes.") and name.endswith("DType"))


def _torch_load_safely(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            # mmap (zip format only): the optimizer state in training checkpoints is never read into memory
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        text = str(e)
        try:
            blocked = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path)
                       if not _is_allowed_numpy(g)]
        except Exception:  # noqa: BLE001 - a corrupt file fails here too; then the text decides
            blocked = []
        if not blocked:  # legacy (non-zip) files: read the global's name off torch's message
            blocked = [g for g in re.findall(r"GLOBAL ([\w.]+)", text) if not _is_allowed_numpy(g)]
        if blocked or "unsupported global" in text.lower():
            what = f" ({', '.join(blocked)})" if blocked else ""
            raise CheckpointError(
                f"{path}: the pickle needs code beyond plain tensors{what}; refusing to unpickle it. "
                "If you trust the file, re-save just its state dict: "
                "torch.save(torch.load(f, weights_only=False)['state_dict'], 'plain.pth')"
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_reason(text)}); "
                              "it may be truncated or not written by torch.save") from None
    except (EOFError, RuntimeError, ValueError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, it may be truncated ({first})") from None


# --- TorchScript archives (OpenAI's RN50.pt) without torch.jit -----------------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Stand-in for a `__torch__.*` module object: records its attributes, has no behaviour."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:  # objects with a custom __getstate__; their state holds no named weights we use
            self.__dict__["_state"] = state


def _identity(*args: Any) -> Any:
    return args[0] if args else None


class _ScriptUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript `data.pkl`: tensors, containers and attribute-only module stand-ins."""

    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str, path: Path):
        import io

        super().__init__(io.BytesIO(data))
        self.zf, self.prefix, self.path = zf, prefix, path
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return type(name, (_ScriptObject,), {})
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, hooks: data
        if module == "collections" and name == "OrderedDict":
            return dict
        if module == "torch.jit._pickle" and name.startswith(("build_", "restore_type_tag")):
            return _identity
        raise CheckpointError(f"{self.path}: TorchScript archive needs {module}.{name}; refusing to unpickle it")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self.path}: unknown persistent id {pid!r} in the TorchScript archive")
        _, dtype, key, _location, numel = pid[:5]
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"{self.path}: unsupported storage type {dtype!r}")
        if key not in self.storages:
            try:
                raw = self.zf.read(f"{self.prefix}data/{key}")
            except (KeyError, zipfile.BadZipFile, EOFError) as e:
                raise CheckpointError(
                    f"{self.path}: storage {key} unreadable ({e}); the file may be truncated") from None
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) != numel * itemsize:
                raise CheckpointError(f"{self.path}: storage {key} has {len(raw)} bytes, expected {numel * itemsize}")
            self.storages[key] = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self.storages[key]

    def _rebuild_tensor(self, storage: torch.Tensor, offset: int, size, stride, *_: Any) -> torch.Tensor:
        size, stride = tuple(size), tuple(stride)
        last = offset + sum((s - 1) * st for s, st in zip(size, stride)) if all(size) else offset - 1
        if last >= storage.numel():
            raise CheckpointError(f"{self.path}: tensor view reaches past its storage; the archive is corrupt")
        return torch.as_strided(storage, size, stride, offset).clone()


def _read_torchscript(zf: zipfile.ZipFile, path: Path) -> dict[str, torch.Tensor]:
    pkl = [n for n in zf.namelist() if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
    if not pkl:
        raise CheckpointError(f"{path}: TorchScript archive without data.pkl")
    prefix = pkl[0][: -len("data.pkl")]
    try:
        root = _ScriptUnpickler(zf.read(pkl[0]), zf, prefix, path).load()
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any malformed pickle is a bad file, reported as such
        raise CheckpointError(f"{path}: unreadable TorchScript archive ({type(e).__name__}: {e})") from None
    tensors: dict[str, torch.Tensor] = {}
    _collect_tensors(root, "", tensors)
    return tensors


def _collect_tensors(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, _ScriptObject):
        for name, value in vars(obj).items():
            if name != "_state":
                _collect_tensors(value, f"{prefix}{name}.", out)


# --------------------------------------------------------------------------------------------------------
# State-dict shaping and validation


def extract_state_dict(obj: Any, path: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """The model weights inside a loaded checkpoint: `obj["state_dict"]` if present, else `obj` itself; a
    DataParallel `module.` prefix is stripped from every key that has it."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (or a dict with 'state_dict'), got {type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; this is not a model state dict")
        name = key[len("module."):] if key.startswith("module.") else key
        if name in out:
            raise CheckpointError(f"{path}: key {name!r} appears both with and without the 'module.' prefix")
        out[name] = value
    return out


def check_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module,
                     may_miss: tuple[str, ...] = ()) -> KeyReport:
    """Compare keys and shapes with `model.state_dict()`. Keys starting with one of `may_miss` (and
    BatchNorm counters when `may_miss` is given) may be absent."""
    expected = model.state_dict()
    report = KeyReport()
    for key, want in expected.items():
        if key not in state:
            tolerated = may_miss and (key.startswith(may_miss) or key.endswith(".num_batches_tracked"))
            if not tolerated:
                report.missing.append(key)
            continue
        got = state[key]
        if tuple(got.shape) != tuple(want.shape):
            report.mismatched.append((key, f"checkpoint shape {list(got.shape)} vs model {list(want.shape)}"))
        elif got.dtype.is_floating_point != want.dtype.is_floating_point:
            report.mismatched.append((key, f"checkpoint dtype {got.dtype} vs model {want.dtype}"))
    report.unexpected = [k for k in state if k not in expected]
    return report


def _cast_like(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Checkpoint tensors in the model's dtypes (OpenAI's archive is fp16; our model is fp32)."""
    expected = model.state_dict()
    return {k: v.to(expected[k].dtype) for k, v in state.items() if k in expected}


def load_cris_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strictly load a full CRIS state dict, or raise CheckpointError (model untouched) listing every problem."""
    report = check_state_dict(state, model)
    if not report.ok:
        hint = ""
        if "visual.conv1.weight" in state and "neck.aggr.0.weight" not in state:
            hint = (" (these look like OpenAI CLIP weights: `tunevlseg convert-cris DST --clip-rn50 SRC` "
                    "builds a CRIS from them)")
        raise CheckpointError(f"{source} does not fit this CRIS: {report.summary()}{hint}", report)
    model.load_state_dict(_cast_like(state, model), strict=True)


def read_cris_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The stripped CRIS state dict from a community checkpoint, a plain state dict or a converted file."""
    return extract_state_dict(read_tensors(path), path)


def load_cris_weights(model: nn.Module, path: str | os.PathLike) -> None:
    load_cris_state(model, read_cris_state(path), str(path))


def read_clip_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """OpenAI CLIP weights (TorchScript archive or a plain state dict) with the non-weight entries removed."""
    state = extract_state_dict(read_tensors(path), path)
    for key in CLIP_EXTRA_KEYS:
        state.pop(key, None)
    return state


def load_clip_rn50(model: nn.Module, path: str | os.PathLike) -> KeyReport:
    """Initialise the backbone of `model` (a CRIS or a bare `CLIPBackbone`) from OpenAI's RN50 weights.

    Every CLIP weight must fit; only CRIS's additions (the attention-pool `connect` branch) and BatchNorm
    counters may be absent and keep their initial values. Raises CheckpointError before touching the model.
    """
    backbone = getattr(model, "backbone", model)
    state = read_clip_state(path)
    if state and all(k.startswith("backbone.") for k in state):  # a CRIS-style backbone dump
        state = {k[len("backbone."):]: v for k, v in state.items()}
    report = check_state_dict(state, backbone, may_miss=CLIP_MAY_MISS)
    if not report.ok:
        raise CheckpointError(f"{path} does not fit the CLIP backbone: {report.summary()}", report)
    backbone.load_state_dict(_cast_like(state, backbone), strict=False)
    return report


# --------------------------------------------------------------------------------------------------------
# Writing


def save_converted(state: Mapping[str, torch.Tensor], dst: str | os.PathLike, config: Mapping[str, Any],
                   source: str = "") -> Path:
    """Write a CRIS state dict as safetensors with its config in the metadata; atomic (tmp file + rename)."""
    from safetensors.torch import save_file

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    metadata = {"format": "pt", "tunevlseg": FORMAT_TAG, "config": json.dumps(dict(config)), "source": source}
    tmp = dst.with_name(dst.name + ".partial")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst


def converted_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The CRIS config stored by `save_converted`, or None for other files."""
    path = Path(path)
    if not path.is_file() or not _looks_like_safetensors(path):
        return None
    meta = safetensors_metadata(path)
    if meta.get("tunevlseg") != FORMAT_TAG or "config" not in meta:
        return None
    return json.loads(meta["config"])


def convert_command(src: str | None, dst: str, *, clip_rn50: str | None = None, config: str = "cris-rn50",
                    seed: int = 0, force: bool = False, all_keys: bool = False) -> int:
    """`tunevlseg convert-cris` (registered on the CRIS card as its `converter`): validate SRC (a CRIS checkpoint)
    or `clip_rn50` (OpenAI's RN50 weights) against `config` and write DST as safetensors; 1 without writing
    when keys do not fit."""
    import sys

    from trainables.vlsm.cris.model import CRIS, config_to_dict, load_cris_config

    if bool(src) == bool(clip_rn50):
        raise ConfigError("give either SRC (a CRIS checkpoint) or --clip-rn50 PATH, not both or neither")
    dst = Path(dst)
    if dst.exists() and not force:
        raise ConfigError(f"{dst} exists; pass --force to overwrite it")
    cfg = load_cris_config(config)
    limit = None if all_keys else 25

    try:
        if src:
            with torch.device("meta"):  # shapes only: no need to allocate 147 M random weights
                model = CRIS(cfg)
            state = read_cris_state(src)
            report = check_state_dict(state, model)
            source = Path(src).name
        else:
            torch.manual_seed(seed)
            model = CRIS(cfg)
            report = load_clip_rn50(model, clip_rn50)
            state = model.state_dict()
            source = f"clip-rn50:{Path(clip_rn50).name}"
    except CheckpointError as e:
        if e.report is None:
            raise
        report = e.report
        state = None

    if state is None or not report.ok:
        print("\n".join(report.lines(limit)))
        print(f"tunevlseg convert-cris: error: {src or clip_rn50} does not fit CRIS "
              f"config {config!r}: {report.summary()}; nothing written", file=sys.stderr)
        return 1
    expected = model.state_dict()
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    save_converted(state, dst, config_to_dict(cfg), source)
    values = sum(v.numel() for v in state.values())
    print(f"wrote {dst}: {len(state)} tensors, {values:,} values (config {config})")
    return 0
