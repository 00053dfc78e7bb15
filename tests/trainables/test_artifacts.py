"""Tuned-prompt artifacts: trainable tensors only, safetensors + JSON, refusing mismatches, never unpickling."""

import json
import os

import pytest
import torch

from trainables.config import ConfigError
from trainables.model import ARTIFACT_CONFIG, ARTIFACT_TENSORS, build_from_artifact, build_model


def tiny(learner="coop", **learner_config):
    extra = {"shared_attention": {"nhead": 4, "dim_feedforward": 48}}.get(learner, {})
    return build_model({"vlsm_config": "tiny", "learner": learner, "seed": 0,
                        "learner_config": {"prompt_depth": 2, **extra, **learner_config}}).eval()


@pytest.fixture()
def saved(tmp_path):
    model = tiny()
    with torch.no_grad():
        model.learner.context_vectors.mul_(3.0)
    model.save_artifact(tmp_path)
    return model, tmp_path


def test_artifact_holds_only_trainable_tensors_and_the_config(saved):
    from safetensors.torch import load_file

    model, path = saved
    tensors = load_file(str(path / ARTIFACT_TENSORS))
    assert set(tensors) == {n for n, _ in model.named_trainable_parameters()}
    assert all(n.startswith(("learner.", "upsampler.")) for n in tensors)
    assert (path / ARTIFACT_TENSORS).stat().st_size < 20_000  # KB, not the frozen VLSM's MB
    meta = json.loads((path / ARTIFACT_CONFIG).read_text())
    assert meta["model"]["learner"] == "coop" and meta["learner_config"]["prompt_depth"] == 2
    assert meta["trainable_params"] == model.count_parameters()[0]


def test_build_from_artifact_reproduces_logits(saved):
    model, path = saved
    g = torch.Generator().manual_seed(0)
    x, tok = torch.randn(2, 3, 48, 48, generator=g), model.tokenize(["polyp.", "tumour"])
    rebuilt = build_from_artifact(path).eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x, **tok), model(x, **tok))


def test_artifact_records_its_dataset_prompt_for_predict(tmp_path):
    tiny().save_artifact(tmp_path / "with", data={"dataset": "kvasir", "prompt": "polyp."})
    assert build_from_artifact(tmp_path / "with").default_prompt == "polyp."
    tiny().save_artifact(tmp_path / "without")  # older artifacts and hand-made ones: predict needs --prompt
    assert build_from_artifact(tmp_path / "without").default_prompt is None


def test_artifact_records_a_non_default_resize_for_predict(tmp_path):
    """A prompt tuned on bilinear-resized images (data.resize) is applied to bilinear-resized images."""
    from trainables.trial import TrialConfig, _artifact_data

    def data(**d):
        cfg = TrialConfig.from_dict({"data": {"dataset": "kvasir", "root": "/x", **d},
                                     "model": {"vlsm_config": "tiny", "learner": "coop"}})
        return _artifact_data(cfg, None)

    assert "resize" not in data()  # the default: artifacts of every other trial unchanged
    assert data(resize="bilinear_antialias")["resize"] == "bilinear_antialias"
    tiny().save_artifact(tmp_path / "bilinear", data=data(resize="bilinear_antialias"))
    assert build_from_artifact(tmp_path / "bilinear").input_resize == "bilinear_antialias"
    tiny().save_artifact(tmp_path / "bicubic", data=data())
    assert build_from_artifact(tmp_path / "bicubic").input_resize == "bicubic"


def test_found_from_a_checkpoint_or_a_trial_directory(saved, tmp_path_factory):
    import shutil

    from trainables.model import find_artifact

    _, path = saved
    trial = tmp_path_factory.mktemp("tune") / "trial"
    for n in (3, 12):  # the newest checkpoint holding an artifact wins (numbers are zero-padded by Ray)
        shutil.copytree(path, trial / f"checkpoint_{n:06d}" / "artifact")
    (trial / "checkpoint_000013").mkdir()  # a later checkpoint without one (an epoch checkpoint)
    assert find_artifact(trial) == trial / "checkpoint_000012" / "artifact"
    assert find_artifact(trial / "checkpoint_000003") == trial / "checkpoint_000003" / "artifact"
    assert find_artifact(path) == path
    with pytest.raises(FileNotFoundError, match="no tuned-prompt artifact in"):
        find_artifact(trial / "checkpoint_000013")


def test_refuses_another_learner(saved):
    _, path = saved
    with pytest.raises(ConfigError, match="learner is 'coop' but this model's is 'vpt'; build the model with "
                                          "learner='coop'"):
        tiny("vpt").load_artifact(path)


def test_refuses_another_vlsm(saved):
    _, path = saved
    meta = json.loads((path / ARTIFACT_CONFIG).read_text())
    meta["model"]["vlsm"] = "cris"
    (path / ARTIFACT_CONFIG).write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="VLSM is 'cris' but this model's is 'clipseg'"):
        tiny().load_artifact(path)


def test_refuses_another_learner_config(saved):
    _, path = saved
    with pytest.raises(ConfigError, match=r"learner config differs in prompt_depth \(artifact 2, model 3\)"):
        tiny(prompt_depth=3).load_artifact(path)


def test_refuses_another_flag_even_with_equal_shapes(tmp_path):
    tiny("shared_attention").save_artifact(tmp_path)
    with pytest.raises(ConfigError, match="attend_across_prompts"):
        tiny("shared_attention", attend_across_prompts=False).load_artifact(tmp_path)


def test_refuses_other_shapes(saved):
    _, path = saved
    meta = json.loads((path / ARTIFACT_CONFIG).read_text())
    meta["learner_config"]["prompt_depth"] = 3  # a tampered config: tensors no longer fit
    (path / ARTIFACT_CONFIG).write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"tensor learner.context_vectors has shape \(2, 4, 32\), this model "
                                          r"expects \(3, 4, 32\)"):
        tiny(prompt_depth=3).load_artifact(path)


def test_refuses_missing_upsampler(saved):
    _, path = saved
    model = build_model({"vlsm_config": "tiny", "learner": "coop", "upsampler": False,
                         "learner_config": {"prompt_depth": 2}})
    with pytest.raises(ConfigError, match="upsampler is True but this model's is False"):
        model.load_artifact(path)


def test_missing_files_and_foreign_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing tunevlseg.json"):
        tiny().load_artifact(tmp_path)
    (tmp_path / ARTIFACT_CONFIG).write_text(json.dumps({"format": "something-else"}))
    (tmp_path / ARTIFACT_TENSORS).write_bytes(b"")
    with pytest.raises(ConfigError, match="is not a tunevlseg-prompt-artifact v1 file"):
        tiny().load_artifact(tmp_path)


class _Payload:
    """Unpickling this would create a file: proof that loading never runs pickle."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_loading_never_unpickles(saved, tmp_path_factory):
    model, path = saved
    sentinel = str(tmp_path_factory.mktemp("x") / "unpickled")
    torch.save({"learner.context_vectors": _Payload(sentinel)}, path / ARTIFACT_TENSORS)
    with pytest.raises(Exception):
        model.load_artifact(path)
    assert not os.path.exists(sentinel)


def test_frozen_vlsm_is_reused_across_builds_but_never_for_e2e(monkeypatch):
    # A reused Ray worker runs trial after trial on the same frozen weights: the second build must not
    # load them again, and must see them unchanged; E2E trains the VLSM, so it always gets a fresh copy.
    import torch

    from trainables import model as model_module
    from trainables.model import build_model

    monkeypatch.setattr(model_module, "_FROZEN", {})  # this test's own cache: it leaves garbage in it
    a = build_model({"vlsm": "clipseg", "vlsm_config": "tiny", "learner": "coop"})
    before = {k: v.clone() for k, v in a.vlsm.state_dict().items()}
    tokens = a.tokenize(["polyp."])
    a.train()
    a(torch.randn(1, 3, a.spec.image_size, a.spec.image_size), tokens["input_ids"], tokens["attention_mask"]).mean().backward()
    b = build_model({"vlsm": "clipseg", "vlsm_config": "tiny", "learner": "vpt"})
    assert b.vlsm is a.vlsm
    assert all(torch.equal(before[k], v) for k, v in b.vlsm.state_dict().items())
    assert not any(p.requires_grad for p in b.vlsm.parameters()) and not b.vlsm.training
    # A kept VLSM stays on the device the last trial moved it to ("meta" stands in for a GPU here): the next
    # model is built around it on that device, and the earlier model's VLSM is not pulled back.
    b.to("meta")
    c = build_model({"vlsm": "clipseg", "vlsm_config": "tiny", "learner": "coop",
                     "learner_config": {"context_init": None}})
    assert c.vlsm is a.vlsm and {p.device.type for p in c.parameters()} == {"meta"}
    assert {p.device.type for p in a.vlsm.parameters()} == {"meta"}
    e2e = build_model({"vlsm": "clipseg", "vlsm_config": "tiny", "learner": "e2e"})
    assert e2e.vlsm is not a.vlsm
    monkeypatch.setenv("TUNEVLSEG_VLSM_CACHE", "0")
    assert build_model({"vlsm": "clipseg", "vlsm_config": "tiny", "learner": "coop"}).vlsm is not a.vlsm


@pytest.mark.parametrize("damage", ["truncate", "garbage", "config"])
def test_a_corrupt_artifact_is_one_line_naming_it(tmp_path, damage, capsys):
    from benchmark import cli

    path = tmp_path / "art"
    tiny().save_artifact(path, data={"dataset": "kvasir", "prompt": "polyp."})
    if damage == "truncate":
        data = (path / ARTIFACT_TENSORS).read_bytes()
        (path / ARTIFACT_TENSORS).write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        (path / ARTIFACT_TENSORS).write_bytes(b"\x00" * 64)
    else:
        (path / ARTIFACT_CONFIG).write_text('{"format": ')
    with pytest.raises(ConfigError, match="is corrupt"):
        build_from_artifact(path)
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(images / "a.png")
    code = cli.main(["predict", "--artifact", str(path), "--images", str(images), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and str(path) in err and "corrupt" in err
