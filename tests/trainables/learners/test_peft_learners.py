"""LoRA and VLSM-Adapter: the learners that attach to the frozen encoders instead of prompting them.

The generic checks (gradients reach exactly the trainable tensors, seeded construction, artifact round trip)
run for them in tests/trainables/learners/test_learners.py; these are their own: parameter counts against closed forms and the
VLSM-Adapter paper, the frozen VLSM other trials share staying untouched, and the attach points computing
what the modules they replace computed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.cli import main as cli_main
from trainables import model as model_module
from trainables.catalog import LEARNERS, TEXT, VISION, VLSMS
from trainables.config import ConfigError, from_dict
from trainables.model import ModelConfig, PromptedVLSM, build_from_artifact, build_model
from trainables.vlsm.cris.model import SplitSelfAttention, causal_mask


def tiny(vlsm: str, learner: str, seed: int = 0, upsampler: bool = True, **learner_config):
    return build_model({"vlsm": vlsm, "vlsm_config": "tiny", "learner": learner, "learner_config": learner_config,
                        "seed": seed, "upsampler": upsampler})


def batch(model, n=2):
    g = torch.Generator().manual_seed(0)
    s = model.spec.image_size
    return torch.randn(n, 3, s, s, generator=g), model.tokenize(["polyp.", "a big red polyp in the colon."][:n])


def learner_params(model) -> int:
    return model.describe()["trainable_by_part"]["learner"]


# ---- LoRA: counts ------------------------------------------------------------------------------------------


def lora_closed_form(adapter, rank: int, targets=(TEXT, VISION), projections="qkv") -> int:
    """r · Σ (d_in + d_out) over the targeted projections, read off the VLSM's own modules."""
    points = adapter.attach_points()
    total = 0
    for modality in targets:
        for layer in points.layers[modality]:
            for p in projections:
                lin = adapter.get_submodule(layer.projections[p])
                total += rank * (lin.in_features + lin.out_features)
    return total


@pytest.mark.parametrize("vlsm", ["clipseg", "cris"])
def test_lora_count_is_the_closed_form_and_linear_in_the_rank(vlsm):
    adapter = VLSMS.get(vlsm)(config="tiny")
    counts = {}
    for rank in (1, 2, 4, 8):
        counts[rank] = learner_params(tiny(vlsm, "lora", rank=rank))
        assert counts[rank] == lora_closed_form(adapter, rank)
    assert counts[8] == 8 * counts[1] and counts[4] - counts[2] == 2 * counts[1]  # linear, through 0
    text_only = learner_params(tiny(vlsm, "lora", rank=2, targets="text", projections="qkvo"))
    assert text_only == lora_closed_form(adapter, 2, targets=(TEXT,), projections="qkvo")


def test_lora_full_size_counts():
    # CLIPSeg rd64: 12 text layers x 3 x r(512+512) + 10 run vision layers x 3 x r(768+768) = 82,944 r;
    # CRIS RN50: 12 text blocks x 3 x r(512+512) + attention pool 3 x r(2048+2048) = 49,152 r.
    for vlsm, config, per_rank in (("clipseg", "clipseg-rd64", 82_944), ("cris", "cris-rn50", 49_152)):
        model = build_model({"vlsm": vlsm, "vlsm_config": config, "learner": "lora", "learner_config": {"rank": 2}})
        assert learner_params(model) == 2 * per_rank


# ---- VLSM-Adapter: counts ----------------------------------------------------------------------------------


def block(width: int, hidden: int) -> int:
    return 2 * width * hidden + hidden + width  # down (w->b, bias) + up (b->w, bias)


def test_adapter_counts_match_vlsm_adapter_on_full_size_clipseg():
    # VLSM-Adapter's dense CLIPSeg adapters (bottleneck 64, 9 layers per encoder, 2 blocks each; condition
    # block 256): V 1,784,448, VL 2,974,464, VLC 3,237,376 -- the "3 million trainable parameters" of its
    # abstract (MICCAI 2024). The paper's tables are not in reach here, so the per-variant figures are checked
    # against the closed form, the headline against the abstract.
    def count(**cfg):
        return learner_params(build_model({"vlsm": "clipseg", "vlsm_config": "clipseg-rd64", "learner": "adapter",
                                           "learner_config": cfg}))

    v = 18 * block(768, 64)
    vl = v + 18 * block(512, 64)
    vlc = vl + block(512, 256)
    assert (v, vl, vlc) == (1_784_448, 2_974_464, 3_237_376)
    assert count(targets="vision", condition=False) == v
    assert count(condition=False) == vl
    assert count() == vlc and round(vlc / 1e6) == 3


def test_shallow_adapter_counts_match_vlsm_adapter_on_full_size_clipseg():
    # VLSM-Adapter's shallow CLIPSeg adapters (bottleneck 512): one block per decoder tap (3) on the vision
    # side, one per tapped text layer (3), the condition block (256).
    def count(**cfg):
        return learner_params(build_model({"vlsm": "clipseg", "vlsm_config": "clipseg-rd64", "learner": "adapter",
                                           "learner_config": {"variant": "shallow", **cfg}}))

    v = 3 * block(768, 512)
    vl = v + 3 * block(512, 512)
    assert (v, vl, vl + block(512, 256)) == (2_363_136, 3_939_072, 4_201_984)
    assert count(targets="vision", condition=False) == v
    assert count() == vl + block(512, 256)


# The tiny CLIPSeg with its conditioning as wide as its text (32): shallow adds text states to it unprojected.
SQUARE_TINY = {"base": "tiny", "projection_dim": 32}


def test_shallow_adapter_reads_the_taps_and_leaves_both_encoders_alone():
    model = build_model({"vlsm": "clipseg", "vlsm_config": SQUARE_TINY, "learner": "adapter",
                         "learner_config": {"variant": "shallow", "bottleneck": 8}, "seed": 0}).eval()
    taps = model.vlsm.extract_layers
    assert len(model.vlsm.tap_adapters) == len(model.vlsm.text_tap_adapters) == len(taps)
    assert model.frozen_image_side  # the vision stream is untouched: the frozen-feature cache stays usable
    x, tok = batch(model)
    with torch.no_grad():
        cached = model.vlsm.image_side(x)  # un-adapted taps, as the cache stores them
        assert torch.equal(model(x, **tok, image_side=cached), model(x, **tok))
        side = [t.clone() for t in model.vlsm.encode_vision(x, None)]
    for a, b in zip(cached, side):  # the encoders' own pass is the frozen one
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="'shallow' needs decoder taps, which cris does not have"):
        tiny("cris", "adapter", variant="shallow")
    with pytest.raises(ConfigError, match=r"'shallow' adds text states \(32 wide\) to the conditioning vector \(24 wide\)"):
        tiny("clipseg", "adapter", variant="shallow")


def test_adapter_counts_on_cris_adapt_the_text_transformer_only():
    model = tiny("cris", "adapter", bottleneck=8, condition_bottleneck=16)
    cfg = model.vlsm.config
    expected = 2 * cfg.transformer_layers * block(cfg.transformer_width, 8) + block(cfg.embed_dim, 16)
    assert learner_params(model) == expected and model.describe()["attached_to"] == [TEXT]
    with pytest.raises(ConfigError, match="learner 'adapter' targets: 'vision': cris has no transformer layers"):
        tiny("cris", "adapter", targets="vision")


def test_adapter_layers_follow_the_decoder_taps_on_clipseg():
    model = tiny("clipseg", "adapter", condition=False)
    taps = model.vlsm.extract_layers  # tiny: [0, 1] -> the first max = 1 layer of each encoder
    cfg = model.vlsm.model.config
    expected = 2 * max(taps) * (block(cfg.text_config.hidden_size, 64) + block(cfg.vision_config.hidden_size, 64))
    assert learner_params(model) == expected


# ---- the shared frozen VLSM, eval mode, the image-side cache -------------------------------------------------


@pytest.mark.parametrize("learner", ["lora", "adapter"])
def test_attaching_leaves_the_shared_frozen_vlsm_untouched(learner):
    coop = tiny("clipseg", "coop", upsampler=False)
    shared = coop.vlsm
    x, tok = batch(coop)
    modules = [(n, type(m)) for n, m in shared.named_modules()]
    with torch.no_grad():
        before = shared(x, **tok).logits
    attached = tiny("clipseg", learner)
    assert attached.vlsm is not shared
    assert [(n, type(m)) for n, m in shared.named_modules()] == modules  # nothing inserted or wrapped
    assert len(list(attached.vlsm.named_modules())) > len(modules)
    # the frozen weights are shared, not copied: every frozen tensor of the attached tree is one of the shared
    frozen = {id(p) for p in attached.vlsm.parameters() if not p.requires_grad}
    assert frozen == {id(p) for p in shared.parameters()}
    with torch.no_grad():
        for _, p in attached.named_trainable_parameters():
            p.add_(0.1)
        assert torch.equal(shared(x, **tok).logits, before)
        assert tiny("clipseg", "coop", upsampler=False).vlsm is shared  # still the one kept for reuse


def test_lora_starts_as_the_frozen_vlsm_and_its_dropout_follows_the_mode():
    frozen = tiny("clipseg", "coop", upsampler=False).vlsm
    model = tiny("clipseg", "lora", upsampler=False, dropout=0.5)
    x, tok = batch(model)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x, **tok), frozen(x, **tok).logits, atol=1e-6, rtol=0)  # B = 0 at init
    model.train()
    assert not model.vlsm.training and all(m.training for m in model.learner.attached)
    model.eval()
    assert not any(m.training for m in model.learner.attached)


@pytest.mark.parametrize("vlsm, learner, config, cached", [
    ("clipseg", "lora", {}, False), ("clipseg", "lora", {"targets": "text"}, True),
    ("clipseg", "adapter", {}, False), ("clipseg", "adapter", {"targets": "text"}, True),
    ("cris", "lora", {}, False), ("cris", "adapter", {}, True),
])
def test_frozen_feature_cache_only_where_the_image_pass_is_untouched(vlsm, learner, config, cached):
    assert tiny(vlsm, learner, **config).frozen_image_side is cached


# ---- attach points compute what they replace ---------------------------------------------------------------


def test_split_attention_equals_multihead_attention():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4).eval()
    x = torch.randn(7, 3, 32)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    mask = causal_mask(7)
    with torch.no_grad():
        ref = mha(x, x, x, need_weights=False, attn_mask=mask, key_padding_mask=pad)[0]
        split = SplitSelfAttention(mha)
        out = split(x, x, x, need_weights=False, attn_mask=mask, key_padding_mask=pad)[0]
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    assert split.q_proj.weight.data_ptr() == mha.in_proj_weight.data_ptr()  # a view, not a copy


def test_attention_pool_calls_its_projections():
    adapter = VLSMS.get("cris")(config="tiny")
    pool = adapter.model.backbone.visual.attnpool
    x = torch.randn(2, pool.q_proj.in_features, 3, 3)
    with torch.no_grad():
        ours = pool(x)
        tokens = x.flatten(2).permute(2, 0, 1) + pool.spatial_positions(3, 3)[:, None]
        ref, _ = F.multi_head_attention_forward(  # the fused call the pool made before it called its modules
            tokens, tokens, tokens, tokens.shape[-1], pool.num_heads, None,
            torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]), None, None, False, 0.0,
            pool.c_proj.weight, pool.c_proj.bias, training=False, need_weights=False,
            use_separate_proj_weight=True, q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight)
        ref = F.relu(ref.permute(1, 2, 0).reshape(2, -1, 3, 3) + pool.connect(x))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    calls = []
    pool.q_proj.register_forward_hook(lambda *_: calls.append(1))
    pool(x)
    assert calls  # so a LoRA wrapper of q_proj takes effect


# ---- artifacts, describe, config errors --------------------------------------------------------------------


@pytest.mark.parametrize("vlsm, learner", [("clipseg", "lora"), ("cris", "lora"), ("clipseg", "adapter")])
def test_artifact_rebuilds_the_attached_model(vlsm, learner, tmp_path):
    trained = tiny(vlsm, learner).eval()
    with torch.no_grad():
        for _, p in trained.named_trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, tok = batch(trained)
    with torch.no_grad():
        expected = trained(x, **tok)
    trained.save_artifact(tmp_path, data={"dataset": "kvasir", "prompt": "polyp."})
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "trainable.safetensors"))
    assert set(saved) == {n for n, _ in trained.named_trainable_parameters()}  # never the frozen weights
    rebuilt = build_from_artifact(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x, **tok), expected)


def test_describe_counts_lora(capsys):
    assert cli_main(["describe", "--vlsm", "cris", "--learner", "lora", "--config", "tiny", "--set", "rank=4",
                     "--json"]) == 0
    import json

    info = json.loads(capsys.readouterr().out)
    assert info["trainable_by_part"]["learner"] == lora_closed_form(VLSMS.get("cris")(config="tiny"), 4)
    assert info["attached_to"] == [TEXT, VISION] and info["learner_config"]["rank"] == 4


@pytest.mark.parametrize("learner, config, message", [
    ("lora", {"rank": 0}, "learner 'lora' rank: 0 must be an integer >= 1"),
    ("lora", {"projections": "qx"}, "learner 'lora' projections: 'qx': letters from 'qkvo'"),
    ("lora", {"dropout": 1.0}, r"learner 'lora' dropout: 1.0 must be in \[0, 1\)"),
    ("lora", {"targets": "all"}, "learner 'lora' targets: 'all' is not allowed; allowed: text, vision, both"),
    ("adapter", {"variant": "deep"}, "learner 'adapter' variant: 'deep' is not allowed; allowed: dense, shallow"),
    ("adapter", {"bottleneck": 0}, "learner 'adapter' bottleneck: 0 must be an integer >= 1"),
])
def test_bad_config_is_one_line(learner, config, message):
    entry = LEARNERS.get(learner)
    with pytest.raises(ConfigError, match=message):
        from_dict(entry.config_cls, config, where=f"learner {learner!r}")


def test_a_vlsm_without_attach_points_is_refused():
    adapter = VLSMS.get("clipseg")(config="tiny")

    class NoPoints(type(adapter)):
        def attach_points(self):
            raise NotImplementedError

    adapter.__class__ = NoPoints
    entry = LEARNERS.get("lora")
    with pytest.raises(ConfigError, match="learner 'lora' vlsm: clipseg declares no attach points"):
        PromptedVLSM(ModelConfig(learner="lora"), adapter, entry, from_dict(entry.config_cls, {}))


def test_catalog_marks_them_beyond_the_paper():
    assert LEARNERS.get("lora").beyond_paper and LEARNERS.get("adapter").beyond_paper
    assert not any(LEARNERS.get(n).beyond_paper for n in ("coop", "cocoop", "vpt", "maple", "e2e"))
    assert model_module.LEARNERS is LEARNERS


def test_table3_lists_them_after_the_paper_rows_marked_and_outside_the_average():
    import pandas as pd

    from benchmark.results import tables as T

    def row(vlsm, learner, dice):
        return dict(vlsm=vlsm, learner=learner, dataset="kvasir", variant="default", status="ok",
                    test_dice=dice, objective=0.5, trial_index=0, trial_id=f"{vlsm}-{learner}")

    trials = T.check_trials(pd.DataFrame([row("clipseg", "lora", 0.9), row("clipseg", "coop", 0.5),
                                          row("cris", "adapter", 0.8), row("cris", "coop", 0.3)]))
    table = T.table3(trials)
    beyond = [r for r in table.rows if r.learner in ("lora", "adapter")]
    assert table.rows[-len(beyond):] == beyond and len(beyond) == 2  # after every paper row
    assert {r.labels for r in beyond} == {("CLIPSeg", "LoRA ‡"), ("CRIS", "VLSM-Adapter ‡")}
    assert not any(r.in_average for r in beyond)
    assert table.average[:2] == pytest.approx((40.0, 10.0))  # CoOp rows only: (50 + 30) / 2
    assert any("‡ beyond the paper" in f for f in T.table_grid(table).footnotes)
