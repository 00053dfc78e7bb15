"""CRIS: architecture/key layout of the original, prompt injection, frozen eval mode, safe conversion/loading."""

from __future__ import annotations

import dataclasses
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.cli import main as cli
from trainables.catalog import VLSMS
from trainables.config import ConfigError
from trainables.model import build_model
from trainables.vlsm.base import Prompts
from trainables.vlsm.cris.adapter import CRISAdapter, cris_factory
from trainables.vlsm.cris.convert import CheckpointError, load_clip_rn50, load_cris_weights, read_tensors
from trainables.vlsm.cris.model import CRIS, CLIPBackbone, load_cris_config

TINY = load_cris_config("tiny")


@pytest.fixture(scope="module")
def rn50_meta():
    with torch.device("meta"):  # shapes and counts only, no 147 M allocation
        return CRIS(load_cris_config("cris-rn50"))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return cris_factory(config="tiny")


def batch(adapter: CRISAdapter, texts=("a photo of a polyp.", "tumor"), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = adapter.spec.image_size
    pixels = torch.randn(len(texts), 3, s, s, generator=g)
    return pixels, adapter.tokenize(list(texts))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------------------------
# architecture = the original's state dict


def test_rn50_state_dict_has_the_original_counts(rn50_meta):
    sd = rn50_meta.state_dict()
    assert len(sd) == 662
    assert sum(v.numel() for v in sd.values()) == 146_921_897
    assert sum(p.numel() for p in rn50_meta.parameters()) == 146_849_122
    parts = {p: sum(v.numel() for k, v in rn50_meta.named_parameters() if k.startswith(p + "."))
             for p in ("backbone", "neck", "decoder", "proj")}
    # reference §4: backbone 104.1 M, neck 24.1 M, decoder 12.6 M, projector 6.0 M
    assert {k: round(v / 1e6, 1) for k, v in parts.items()} == {
        "backbone": 104.1, "neck": 24.1, "decoder": 12.6, "proj": 6.0}
    assert sum(parts.values()) == 146_849_122


def test_rn50_key_names_and_shapes_follow_cris_pytorch(rn50_meta):
    sd = rn50_meta.state_dict()
    top = {"backbone.visual", "backbone.transformer", "backbone.token_embedding", "backbone.positional_embedding",
           "backbone.ln_final", "backbone.text_projection", "backbone.logit_scale", "neck", "decoder", "proj"}
    assert all(any(k == t or k.startswith(t + ".") for t in top) for k in sd)
    expected = {  # key -> shape in CRIS.pytorch with OpenAI RN50 (CLIP build_model + CRIS layers.py)
        "backbone.visual.conv1.weight": (32, 3, 3, 3),
        "backbone.visual.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "backbone.visual.layer4.2.bn3.running_var": (2048,),
        "backbone.visual.layer3.5.conv2.weight": (256, 256, 3, 3),
        "backbone.visual.attnpool.positional_embedding": (50, 2048),
        "backbone.visual.attnpool.c_proj.weight": (1024, 2048),
        "backbone.visual.attnpool.connect.0.weight": (1024, 2048, 1, 1),
        "backbone.visual.attnpool.connect.1.num_batches_tracked": (),
        "backbone.transformer.resblocks.11.attn.in_proj_weight": (1536, 512),
        "backbone.transformer.resblocks.0.mlp.c_fc.weight": (2048, 512),
        "backbone.token_embedding.weight": (49408, 512),
        "backbone.positional_embedding": (77, 512),
        "backbone.text_projection": (512, 1024),
        "backbone.logit_scale": (),
        "neck.txt_proj.0.weight": (1024, 1024),
        "neck.txt_proj.1.running_mean": (1024,),
        "neck.norm_layer.0.weight": (1024,),
        "neck.f2_cat.0.weight": (512, 1536, 1, 1),
        "neck.f3_v_proj.0.weight": (256, 512, 3, 3),
        "neck.coordconv.0.conv1.0.weight": (512, 514, 3, 3),
        "neck.coordconv.1.0.weight": (512, 512, 3, 3),
        "decoder.layers.2.multihead_attn.in_proj_weight": (1536, 512),
        "decoder.layers.0.ffn.3.weight": (2048,),
        "decoder.layers.0.self_attn_norm.bias": (512,),
        "decoder.norm.weight": (512,),
        "proj.vis.1.0.weight": (512, 512, 3, 3),
        "proj.vis.3.0.weight": (256, 512, 3, 3),
        "proj.vis.4.bias": (256,),
        "proj.txt.weight": (2305, 1024),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    assert len({k.split(".")[3] for k in sd if k.startswith("backbone.transformer.resblocks.")}) == 12
    # BatchNorm buffers: (running_mean + running_var) per channel + one counter per layer = 72,775 values
    bn = [k[: -len(".num_batches_tracked")] for k in sd if k.endswith("num_batches_tracked")]
    assert sum(2 * sd[f"{k}.running_mean"].numel() + 1 for k in bn) == 146_921_897 - 146_849_122


def test_full_spec_and_upsampler_size(rn50_meta):
    spec = CRISAdapter(rn50_meta).spec
    assert (spec.name, spec.modalities, spec.text_width, spec.vision_width) == ("cris", frozenset({"text"}), 512, None)
    assert (spec.image_size, spec.image_feature_dim, spec.max_prompt_depth) == (416, 1024, 12)
    assert spec.mean == (0.48145466, 0.4578275, 0.40821073) and spec.std == (0.26862954, 0.26130258, 0.27577711)
    with torch.device("meta"):
        up = CRISAdapter(rn50_meta).make_upsampler()
    assert sum(p.numel() for p in up.parameters()) == 512 * 64 + 64 * 25 + 1 == 34_369
    assert up.reduce.bias is None and up.conv.padding_mode == "replicate"


def test_vision_learners_are_not_viable_from_modalities(tiny):
    from trainables.catalog import LEARNERS, is_viable

    viable = {n for n in LEARNERS.names() if is_viable(n, tiny.spec.modalities)}
    assert {"coop", "cocoop", "e2e"} <= viable
    assert not viable & {"vpt", "maple", "shared_attention", "shared_separate"}


def test_registered_and_options_checked():
    assert VLSMS.get("cris").factory == "trainables.vlsm.cris.adapter:cris_factory"
    with pytest.raises(ConfigError, match="compat_extra_first_row"):
        cris_factory(config="tiny", compat_first_row=True)
    with pytest.raises(ConfigError, match="true/false"):
        cris_factory(config="tiny", compat_extra_first_row="yes")
    with pytest.raises(ConfigError, match="shipped: .*cris-rn50"):
        cris_factory(config="rn101")
    with pytest.raises(ConfigError, match="vis_dim"):
        load_cris_config({"vis_dim": 256})
    with pytest.raises(ConfigError, match="unknown key 'width'"):
        load_cris_config({"width": 3})


# --------------------------------------------------------------------------------------------------------
# adapter behaviour


def test_unprompted_forward_equals_plain_cris(tiny):
    pixels, tok = batch(tiny)
    with torch.no_grad():
        out = tiny(pixels, **tok)
        plain = tiny.model(pixels, tok["input_ids"], ~tok["attention_mask"].bool())
    s = tiny.spec.image_size
    assert out.logits.shape == (2, 1, s, s) and out.tap.shape == (2, TINY.vis_dim, s // 16, s // 16)
    torch.testing.assert_close(out.logits, plain)


def test_tokenize_pads_dynamically_and_caps_at_77(tiny):
    tok = tiny.tokenize(["a photo of a polyp.", "tumor"])
    lengths = tok["attention_mask"].sum(1).tolist()
    assert tok["input_ids"].shape == (2, lengths[0]) and lengths[1] < lengths[0]  # padded to the longest only
    assert tok["input_ids"][:, 0].tolist() == [49406, 49406]
    assert tok["input_ids"][0, 1:5].tolist() == [320, 1125, 539, 320]
    assert tok["attention_mask"][1].tolist() == [1] * lengths[1] + [0] * (lengths[0] - lengths[1])
    long = tiny.tokenize(["word " * 120])
    assert long["input_ids"].shape == (1, 77) and long["input_ids"][0, -1] == 49407


def test_embed_tokens_reads_the_frozen_table(tiny):
    emb = tiny.embed_tokens("a photo of a")
    table = tiny.model.backbone.token_embedding.weight
    torch.testing.assert_close(emb, table[[320, 1125, 539, 320]])
    assert not emb.requires_grad


def _reference_one_layer_prompt(adapter, ids, mask, ctx):
    """Hand-built expectation for J=1: [SOS, ctx, rest], positions on all, mask extended, EOS index + B."""
    bb = adapter.model.backbone
    n, b = ids.shape[0], ctx.shape[0]
    emb = bb.token_embedding(ids)
    x = torch.cat([emb[:, :1], ctx.expand(n, -1, -1), emb[:, 1:]], dim=1)
    pad = torch.cat([torch.zeros(n, 1 + b, dtype=torch.bool), ~mask.bool()[:, 1:]], dim=1)
    x = (x + bb.positional_embedding[: x.shape[1]]).permute(1, 0, 2)
    causal = torch.ones(x.shape[0], x.shape[0], dtype=torch.bool).triu(1)
    for block in bb.transformer.resblocks:
        x = block(x, attn_mask=causal, key_padding_mask=pad)
    x = bb.ln_final(x.permute(1, 0, 2))
    state = x[torch.arange(n), ids.argmax(-1) + b] @ bb.text_projection
    return x, state, pad


def test_text_prompts_go_after_sos_with_mask_and_eos_shift(tiny):
    _, tok = batch(tiny)
    ctx = torch.randn(4, TINY.transformer_width)
    with torch.no_grad():
        word, state, pad = tiny.encode_text(tok["input_ids"], tok["attention_mask"], [ctx])
        ref_word, ref_state, ref_pad = _reference_one_layer_prompt(tiny, tok["input_ids"], tok["attention_mask"], ctx)
    assert word.shape == (2, tok["input_ids"].shape[1] + 4, TINY.transformer_width)
    assert torch.equal(pad, ref_pad) and not pad[:, :5].any() and pad[1, -1]
    torch.testing.assert_close(word, ref_word)
    torch.testing.assert_close(state, ref_state)


def _prompt_slots_at_block_inputs(adapter, tok, rows):
    seen = []
    hooks = [blk.register_forward_pre_hook(lambda m, args, kw: seen.append(args[0][1:5].detach().clone()),
                                           with_kwargs=True)
             for blk in adapter.model.backbone.transformer.resblocks]
    try:
        with torch.no_grad():
            adapter.encode_text(tok["input_ids"], tok["attention_mask"], rows)
    finally:
        for h in hooks:
            h.remove()
    return seen  # per block: (B, N, D)


@pytest.mark.parametrize("compat", [False, True])
def test_prompt_depth_counts_fresh_layers(tiny, compat):
    adapter = CRISAdapter(tiny.model, compat_extra_first_row=compat)
    _, tok = batch(adapter)
    rows = [torch.randn(4, TINY.transformer_width) for _ in range(2)]  # J = 2 of 4 layers
    seen = _prompt_slots_at_block_inputs(adapter, tok, rows)
    pos = adapter.model.backbone.positional_embedding[1:5, None]
    torch.testing.assert_close(seen[0], rows[0][:, None].expand(-1, 2, -1) + pos)  # layer 1: row 0 (+ positions)
    fresh = [i for i in range(1, 4) if any(torch.equal(seen[i][:, 0], r) for r in rows)]
    if compat:  # original §9.3: row 0 again at layer 2, row 1 at layer 3 -> J + 1 fresh layers
        assert fresh == [1, 2] and torch.equal(seen[1][:, 0], rows[0]) and torch.equal(seen[2][:, 0], rows[1])
    else:  # layers 1..J
        assert fresh == [1] and torch.equal(seen[1][:, 0], rows[1])


def test_per_sample_prompts_and_overflow(tiny):
    _, tok = batch(tiny)
    rows = [torch.randn(2, 4, TINY.transformer_width)]
    with torch.no_grad():
        word, _, _ = tiny.encode_text(tok["input_ids"], tok["attention_mask"], rows)
        single, _, _ = tiny.encode_text(tok["input_ids"][1:], tok["attention_mask"][1:], [rows[0][1]])
    torch.testing.assert_close(word[1:], single)  # sample 1 used its own prompts
    long = tiny.tokenize(["word " * 120])
    with torch.no_grad():
        word, state, pad = tiny.encode_text(long["input_ids"], long["attention_mask"],
                                            [torch.randn(4, TINY.transformer_width)])
    assert word.shape[1] == 77 and pad.shape == (1, 77) and not pad.any()


def test_bad_prompts_are_refused(tiny):
    pixels, tok = batch(tiny)
    with pytest.raises(ValueError, match="ResNet"):
        tiny(pixels, **tok, prompts=Prompts(vision=[torch.zeros(4, 8)]))
    with pytest.raises(ValueError, match="exceeds the 4 CRIS text layers"):
        tiny(pixels, **tok, prompts=Prompts(text=[torch.zeros(4, TINY.transformer_width)] * 5))
    with pytest.raises(ValueError, match="width 7"):
        tiny(pixels, **tok, prompts=Prompts(text=[torch.zeros(4, 7)]))


def test_image_features_are_the_mean_of_c5(tiny):
    pixels, _ = batch(tiny)
    with torch.no_grad():
        feats = tiny.image_features(pixels)
        c5 = tiny.model.backbone.encode_image(pixels)[-1]
    assert feats.shape == (2, TINY.embed_dim)
    torch.testing.assert_close(feats, c5.mean(dim=(2, 3)))


class _TinyLearner(nn.Module):
    """Learner-free stand-in: J rows of B=4 prompts, as a CoOp would produce."""

    def __init__(self, width: int, depth: int = 2):
        super().__init__()
        self.ctx = nn.Parameter(torch.randn(depth, 4, width) * 0.02)

    def forward(self) -> Prompts:
        return Prompts(text=list(self.ctx.unbind(0)))


def test_frozen_cris_stays_in_eval_mode_while_prompts_train(tiny):
    tiny.requires_grad_(False)
    learner = _TinyLearner(TINY.transformer_width)
    upsampler = tiny.make_upsampler()
    rho = nn.Parameter(torch.tensor(0.5))
    opt = torch.optim.AdamW([*learner.parameters(), *upsampler.parameters(), rho], lr=1e-2)
    before = snapshot(tiny)
    tiny.train()
    assert tiny.training and not tiny.model.training
    assert not any(m.training for m in tiny.model.modules())
    pixels, tok = batch(tiny)
    out = tiny(pixels, **tok, prompts=learner())
    logits = (1 - rho) * out.logits + rho * upsampler(out.tap)
    nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits)).backward()
    opt.step()
    after = snapshot(tiny)
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats and weights unchanged
    # a .train() issued before freezing is corrected at the next forward
    other = cris_factory(config="tiny")
    other.train()
    assert other.model.training
    other.requires_grad_(False)
    with torch.no_grad():
        other(pixels, **tok)
    assert not other.model.training


def test_trainable_cris_trains_batchnorm(tiny):
    tiny.train()  # e2e: parameters require grad -> BatchNorm in train mode, statistics update
    assert tiny.model.training
    pixels, tok = batch(tiny)
    before = tiny.model.neck.f2_cat[1].running_mean.clone()
    tiny(pixels, **tok)
    assert not torch.equal(before, tiny.model.neck.f2_cat[1].running_mean)
    assert tiny.encoder_modules() == [tiny.model.backbone]


# --------------------------------------------------------------------------------------------------------
# trainable counts through the learners (reference §8), against the ModelConfig contract


@pytest.mark.parametrize("learner,learner_config,upsampler,expected", [
    ("coop", {"prompt_depth": 6}, True, 46_658),
    ("coop", {"prompt_depth": 1}, False, 2_048),
    ("cocoop", {"prompt_depth": 1, "intermediate_dim": 64}, True, 135_298),
])
def test_trainable_counts_match_reference(learner, learner_config, upsampler, expected):
    model = build_model({"vlsm": "cris", "vlsm_config": "cris-rn50", "learner": learner,
                               "learner_config": learner_config, "upsampler": upsampler})
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == expected
    assert sum(p.numel() for p in model.vlsm.parameters() if not p.requires_grad) == 146_849_122


# --------------------------------------------------------------------------------------------------------
# conversion and safe loading


def community_checkpoint(path, state: dict[str, torch.Tensor], **extra) -> str:
    """The community format: nested state_dict, DataParallel `module.` prefix, training metadata."""
    torch.save({"epoch": 50, "best_iou": np.float64(0.62), "cur_iou": np.float32(0.6),
                "state_dict": {f"module.{k}": v for k, v in state.items()}, **extra}, path)
    return str(path)


@pytest.fixture
def tiny_state():
    torch.manual_seed(1)
    model = CRIS(TINY)
    with torch.no_grad():  # make BN buffers non-default so a round trip really checks them
        for name, buf in model.named_buffers():
            buf.add_(torch.arange(buf.numel()).reshape(buf.shape).to(buf.dtype) % 7)
    return model.state_dict()


def test_convert_cli_round_trip_loads_strictly(tmp_path, tiny_state, capsys):
    src = community_checkpoint(tmp_path / "cris_best.pth", tiny_state)
    dst = tmp_path / "cris.safetensors"
    assert cli(["convert-cris", src, str(dst), "--config", "tiny"]) == 0
    assert "wrote" in capsys.readouterr().out
    adapter = cris_factory(weights=str(dst))  # config comes from the file's metadata
    got = adapter.model.state_dict()
    assert got.keys() == tiny_state.keys()
    assert all(torch.equal(got[k], tiny_state[k]) for k in got)
    CRIS(TINY).load_state_dict(read_tensors(dst), strict=True)
    # the community checkpoint itself also loads (converted on the fly)
    direct = cris_factory(weights=src, config="tiny").model.state_dict()
    assert all(torch.equal(direct[k], tiny_state[k]) for k in direct)
    assert cli(["convert-cris", src, str(dst), "--config", "tiny"]) == 2  # no silent overwrite


@pytest.mark.parametrize("damage,named", [
    ("shape", "neck.f2_cat.0.weight"),
    ("missing", "decoder.norm.bias"),
    ("unexpected", "decoder.extra.weight"),
])
def test_checkpoint_that_does_not_fit_is_refused_naming_the_key(tmp_path, tiny_state, capsys, damage, named):
    state = dict(tiny_state)
    if damage == "shape":
        state[named] = torch.zeros(3, 3)
    elif damage == "missing":
        del state[named]
    else:
        state[named] = torch.zeros(2)
    src = community_checkpoint(tmp_path / "bad.pth", state)
    dst = tmp_path / "out.safetensors"
    assert cli(["convert-cris", src, str(dst), "--config", "tiny"]) == 1
    captured = capsys.readouterr()
    assert named in captured.out and damage in captured.out and not dst.exists()
    torch.manual_seed(3)
    model = CRIS(TINY)
    before = snapshot(model)
    with pytest.raises(CheckpointError, match=named.replace(".", r"\.")):
        load_cris_weights(model, src)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing loaded half-way


def test_checkpoint_of_another_architecture_is_refused(tmp_path, capsys):
    src = community_checkpoint(tmp_path / "other.pth", nn.Linear(3, 2).state_dict())
    assert cli(["convert-cris", src, str(tmp_path / "o.safetensors"), "--config", "tiny"]) == 1
    out = capsys.readouterr().out
    assert "missing keys" in out and "unexpected keys (2)" in out and "... and" in out


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())  # harmless if it ever ran; it must not be called at all


def test_pickle_needing_code_is_refused(tmp_path, tiny_state):
    src = community_checkpoint(tmp_path / "evil.pth", tiny_state, hook=_Evil())
    with pytest.raises(CheckpointError, match="getcwd"):
        cris_factory(weights=src, config="tiny")
    plain = tmp_path / "evil_plain.pth"
    with open(plain, "wb") as f:  # a legacy (non-zip) pickle
        pickle.dump({"state_dict": {"a": _Evil()}}, f, protocol=2)
    with pytest.raises(CheckpointError, match="getcwd.*refusing"):
        read_tensors(plain)
    with open(plain, "wb") as f:  # not a torch file at all
        pickle.dump({"a": 1}, f, protocol=4)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_tensors(plain)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_truncated_file_is_refused(tmp_path, tiny_state, fmt):
    src = community_checkpoint(tmp_path / "ok.pth", tiny_state)
    if fmt == "safetensors":
        full = tmp_path / "ok.safetensors"
        assert cli(["convert-cris", src, str(full), "--config", "tiny"]) == 0
        src = str(full)
    data = open(src, "rb").read()
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        cris_factory(weights=str(cut), config="tiny")


# --- OpenAI CLIP RN50 ----------------------------------------------------------------------------------


class _OpenAIStyleCLIP(nn.Module):
    """OpenAI's archive layout: CLIP keys without CRIS's `connect`, fp16 weights, 3 metadata buffers."""

    def __init__(self, clip: CLIPBackbone):
        super().__init__()
        del clip.visual.attnpool.connect
        for name, child in clip.named_children():
            setattr(self, name, child)
        for name, p in clip.named_parameters(recurse=False):
            setattr(self, name, p)
        self.register_buffer("input_resolution", torch.tensor(TINY.image_resolution))
        self.register_buffer("context_length", torch.tensor(TINY.context_length))
        self.register_buffer("vocab_size", torch.tensor(TINY.vocab_size))

    def forward(self, x):
        return x * self.logit_scale


@pytest.fixture
def openai_tiny(tmp_path):
    torch.manual_seed(5)
    clip = _OpenAIStyleCLIP(CLIPBackbone(TINY)).half().eval()
    path = tmp_path / "RN50.pt"
    torch.jit.save(torch.jit.trace(clip, torch.ones(2, dtype=torch.half)), str(path))
    return path, {k: v for k, v in clip.state_dict().items()}


def test_torchscript_archive_read_without_jit(openai_tiny):
    path, state = openai_tiny
    got = read_tensors(path)
    oracle = torch.jit.load(str(path)).state_dict()  # our own file: fine to use torch.jit here as the oracle
    assert got.keys() == oracle.keys() == state.keys()
    assert all(torch.equal(got[k], oracle[k]) and got[k].dtype == torch.float16 for k in oracle
               if oracle[k].is_floating_point())


def test_clip_rn50_loads_into_the_backbone(tmp_path, openai_tiny, capsys):
    path, state = openai_tiny
    torch.manual_seed(9)
    model = CRIS(TINY)
    connect = model.backbone.visual.attnpool.connect[0].weight.clone()
    report = load_clip_rn50(model, path)
    assert report.ok
    bb = model.backbone.state_dict()
    assert torch.equal(bb["visual.layer2.1.conv2.weight"], state["visual.layer2.1.conv2.weight"].float())
    assert bb["text_projection"].dtype == torch.float32
    assert torch.equal(model.backbone.visual.attnpool.connect[0].weight, connect)  # CRIS-only part untouched
    # a plain state dict of the same weights works too
    plain = tmp_path / "rn50_sd.pt"
    torch.save(state, plain)
    assert load_clip_rn50(CRIS(TINY), plain).ok
    # the CLI writes a full CRIS file from it
    dst = tmp_path / "from_clip.safetensors"
    assert cli(["convert-cris", str(dst), "--clip-rn50", str(path), "--config", "tiny"]) == 0
    assert torch.equal(read_tensors(dst)["backbone.visual.conv1.weight"], state["visual.conv1.weight"].float())


def test_clip_weights_of_another_size_are_refused(tmp_path, openai_tiny, capsys):
    path, _ = openai_tiny
    model = CRIS(dataclasses.replace(TINY, transformer_layers=5))
    before = snapshot(model)
    with pytest.raises(CheckpointError, match=r"missing \(first: transformer\.resblocks\.4"):
        load_clip_rn50(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_torchscript_archive_needing_code_is_refused(tmp_path):
    path = tmp_path / "evil_ts.pt"
    payload = pickle.dumps(_Evil(), protocol=2)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        zf.writestr("archive/version", "3\n")
    with pytest.raises(CheckpointError, match="getcwd"):
        read_tensors(path)


def test_prompted_model_step_keeps_batchnorm_statistics():
    model = build_model({"vlsm": "cris", "vlsm_config": "tiny", "learner": "cocoop",
                               "learner_config": {"prompt_depth": 2, "intermediate_dim": 8}, "seed": 0})
    before = snapshot(model.vlsm)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    pixels, tok = batch(model.vlsm)
    logits = model(pixels, **tok)
    nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits)).backward()
    opt.step()
    after = snapshot(model.vlsm)
    assert not model.vlsm.model.training
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_weights_directory_and_clip_file_hint(tmp_path, tiny_state, openai_tiny):
    src = community_checkpoint(tmp_path / "cris_best.pth", tiny_state)
    folder = tmp_path / "converted"
    assert cli(["convert-cris", src, str(folder / "cris.safetensors"), "--config", "tiny"]) == 0
    got = cris_factory(weights=str(folder)).model.state_dict()
    assert all(torch.equal(got[k], tiny_state[k]) for k in got)
    with pytest.raises(CheckpointError, match="--clip-rn50"):
        cris_factory(weights=str(openai_tiny[0]), config="tiny")
    with pytest.raises(FileNotFoundError, match="do not exist"):
        cris_factory(weights=str(tmp_path / "nope.pth"), config="tiny")
