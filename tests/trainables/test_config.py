"""Strict configs (trainables/config.py): unknown keys and wrong types named, coercion, `key=value` overrides."""

from dataclasses import dataclass
from typing import Literal

import pytest

from trainables.config import ConfigError, from_dict, parse_overrides


@dataclass(frozen=True)
class _Cfg:
    depth: int = 1
    lr: float = 1e-3
    init: str | None = "a photo of a"
    mode: Literal["a", "b"] = "a"


def test_from_dict_rejects_unknown_key_and_names_allowed():
    with pytest.raises(ConfigError, match=r"learner 'x' unknown key 'dept'; allowed: depth, lr, init, mode"):
        from_dict(_Cfg, {"dept": 3}, where="learner 'x'")


@pytest.mark.parametrize(
    "data, match",
    [({"depth": "3"}, "depth: expected an integer"), ({"depth": True}, "expected an integer"),
     ({"lr": "fast"}, "lr: expected a number"), ({"mode": "c"}, "'c' is not allowed; allowed: 'a', 'b'")],
)
def test_from_dict_type_errors(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(_Cfg, data)


def test_from_dict_coerces_and_accepts_none():
    cfg = from_dict(_Cfg, {"lr": 1, "init": None})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.init is None


def test_parse_overrides_reads_yaml_scalars():
    assert parse_overrides(["prompt_depth=3", "lr=1e-3", "init=null", "use_lora=true"]) == {
        "prompt_depth": 3, "lr": 1e-3, "init": None, "use_lora": True}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["oops"])
