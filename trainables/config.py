"""Strict construction of plain dataclass configs from dicts, YAML and `key=value` overrides.

Every config in the project is a dataclass; this module is the one place that turns user input into one,
so that an unknown key or a wrong type is always reported the same way: the field, the offending value
and the allowed keys.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

C = TypeVar("C")


class ConfigError(ValueError):
    """A user-facing configuration error; the message names the field and the fix."""


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Light type checking for the scalar types configs use; containers are passed through."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not allowed; allowed: {', '.join(map(repr, allowed))}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


def from_dict(cls: type[C], data: Mapping[str, Any] | None, where: str = "") -> C:
    """Build dataclass `cls` from `data`, rejecting unknown keys and obviously wrong types.

    `where` prefixes error messages (e.g. "learner 'coop'") so the user knows which block is wrong.
    Validation beyond types lives in each dataclass's `__post_init__`.
    """
    data = dict(data or {})
    names = field_names(cls)
    unknown = sorted(set(data) - set(names))
    label = f"{where} " if where else ""
    if unknown:
        raise ConfigError(
            f"{label}unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(names)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], f"{label}{k}".strip()) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{label}{e}") from None


def parse_overrides(pairs: list[str] | tuple[str, ...] | None) -> dict[str, Any]:
    """Parse CLI `key=value` pairs; values are read as YAML scalars (`1e-3`, `true`, `[1, 2]`)."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like key=value")
        key, raw = pair.split("=", 1)
        out[key.strip()] = _yaml_scalar(raw)
    return out


def _yaml_scalar(raw: str) -> Any:
    if not raw.strip():
        return ""
    value = yaml.safe_load(raw)
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string; users mean a number
        try:
            return float(value)
        except ValueError:
            pass
    return value


def read_yaml_mapping(path: str | Path, label: str, expected: str = "") -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; errors name `label` (e.g. "spec x.yaml") and the fix."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(x for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x)
        raise ConfigError(f"{label}: not valid YAML{where}: {what or str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{label}: expected a mapping of keys{f' ({expected})' if expected else ''}, "
                          f"got {type(raw).__name__}")
    return raw


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
