"""Registry, strict configs and the offline CLIP tokenizer."""

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from trainables.config import ConfigError, from_dict, parse_overrides
from trainables.registry import Registry, UnknownNameError

REPO = Path(__file__).resolve().parents[2]


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


def test_registry_unknown_and_duplicate():
    reg: Registry[int] = Registry("learner")
    reg.register("coop", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("coop", 2)
    with pytest.raises(UnknownNameError, match=r"unknown learner 'cop' \(did you mean 'coop'\?\); allowed: coop"):
        reg.get("cop")
    with pytest.raises(ValueError, match="lower-case"):
        reg.register("CoOp", 3)


def test_clip_tokenizer_matches_openai_ids():
    from trainables.tokenizer import clip_tokenizer

    tok = clip_tokenizer()
    assert tok("a photo of a", add_special_tokens=False).input_ids == [320, 1125, 539, 320]
    ids = tok(["polyp."]).input_ids[0]
    assert ids[0] == 49406 and ids[-1] == 49407  # SOS ... EOS


def test_datasets_folder_is_not_a_package():
    # A `datasets/__init__.py` would shadow Hugging Face `datasets` for every process started here.
    assert not (REPO / "datasets" / "__init__.py").exists()
    assert not list((REPO / "datasets").rglob("*.py")), "datasets/ holds data cards only"
    spec = importlib.util.find_spec("benchmark")
    assert spec is not None and Path(spec.origin).parent == REPO / "benchmark"
