"""CLIPSeg adapter: equivalence with HF's forward, where prompts enter, the upsampler, loading."""

import pytest
import torch

from trainables.catalog import VLSMS
from trainables.config import ConfigError
from trainables.model import build_model
from trainables.upsampler import PatchUpsampler, ResidualUpsampler
from trainables.vlsm.base import Prompts
from trainables.vlsm.clipseg.adapter import CLIPSegAdapter, build_clipseg

TEXTS = ["polyp.", "a big red polyp in the middle of the colon.", "left ventricle of the heart"]
EOS_VARIANTS = {"legacy_eos_2": "tiny",  # CIDAS configs: eos_token_id 2 -> HF pools at the max token id
                "eos_49407": {"base": "tiny", "text_config": {"eos_token_id": 49407}}}


def _inputs(adapter, n=3, size=None):
    g = torch.Generator().manual_seed(0)
    size = size or adapter.spec.image_size
    return torch.randn(n, 3, size, size, generator=g), adapter.tokenize(TEXTS[:n])


@pytest.fixture(scope="module")
def tiny() -> CLIPSegAdapter:
    return build_clipseg(config="tiny")


@pytest.mark.parametrize("config", list(EOS_VARIANTS.values()), ids=list(EOS_VARIANTS))
def test_zero_shot_equals_hf_forward(config):
    adapter = build_clipseg(config=config)
    x, tok = _inputs(adapter)
    assert tok["attention_mask"].sum(1).unique().numel() == 3  # padded batch: the mask matters
    with torch.no_grad():
        ours = adapter(x, tok["input_ids"], tok["attention_mask"]).logits
        hf = adapter.model(input_ids=tok["input_ids"], pixel_values=x, attention_mask=tok["attention_mask"]).logits
    assert ours.shape == (3, 1, 48, 48)
    assert torch.allclose(ours[:, 0], hf, atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_own_text_mask_equals_hfs_for_each_attention_implementation(impl):
    # The adapter builds the causal + padding mask itself (HF's reads the padding mask on the host, a
    # device sync per step); with either attention kernel it must give HF's forward on a padded batch.
    from transformers.models.clipseg.modeling_clipseg import CLIPSegAttention

    adapter = build_clipseg(config="tiny")
    for module in adapter.model.modules():
        if isinstance(module, CLIPSegAttention):
            module.config._attn_implementation = impl
    adapter.model.config._attn_implementation = impl
    x, tok = _inputs(adapter)
    assert tok["attention_mask"].sum(1).unique().numel() == 3
    with torch.no_grad():
        ours = adapter(x, tok["input_ids"], tok["attention_mask"]).logits
        hf = adapter.model(input_ids=tok["input_ids"], pixel_values=x, attention_mask=tok["attention_mask"]).logits
    assert adapter.model.clip.text_model.config._attn_implementation == impl
    assert torch.allclose(ours[:, 0], hf, atol=1e-5, rtol=0)


@pytest.mark.parametrize("config", list(EOS_VARIANTS.values()), ids=list(EOS_VARIANTS))
def test_text_prompts_enter_after_sos_with_shifted_positions_mask_and_eos(config):
    # Prompts equal to the token embeddings of "a photo of a" must give exactly what the plain text
    # model gives for "a photo of a <text>": same slots, positions, padding/causal mask and EOS pooling.
    adapter = build_clipseg(config=config)
    plain = adapter.tokenize(TEXTS)
    prefixed = adapter.tokenize([f"a photo of a {t}" for t in TEXTS])
    rows = [adapter.embed_tokens("a photo of a")]
    with torch.no_grad():
        ours = adapter.encode_text(plain["input_ids"], plain["attention_mask"], rows)
        ref = adapter.model.clip.get_text_features(**prefixed).pooler_output
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)


def _record_inputs(layers):
    seen, handles = {}, []
    for i, layer in enumerate(layers, start=1):
        handles.append(layer.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0].detach())))
    return seen, handles


def test_deep_prompts_replace_slots_for_layers_2_to_J_and_vision_loop_stops(tiny):
    x, tok = _inputs(tiny, n=2)
    b, depth = 2, 3
    text = [torch.randn(b, tiny.spec.text_width) for _ in range(depth)]
    vision = [torch.randn(b, tiny.spec.vision_width) for _ in range(depth)]
    text_seen, h1 = _record_inputs(tiny.model.clip.text_model.encoder.layers)
    vis_seen, h2 = _record_inputs(tiny.model.clip.vision_model.encoder.layers)
    try:
        with torch.no_grad():
            tiny(x, tok["input_ids"], tok["attention_mask"], Prompts(text=text, vision=vision))
    finally:
        for h in h1 + h2:
            h.remove()
    # layer 1 gets row 0 + positions 1..B (text) right after SOS
    pos = tiny.model.clip.text_model.embeddings.position_embedding.weight[1 : 1 + b]
    assert torch.allclose(text_seen[1][:, 1 : 1 + b], (text[0] + pos).expand(2, -1, -1), atol=1e-6)
    for k in (2, 3):  # layers 2..J receive raw rows 1..J-1 (no position embedding, no LayerNorm)
        assert torch.equal(text_seen[k][:, 1 : 1 + b], text[k - 1].expand(2, -1, -1))
    assert torch.equal(vis_seen[2][:, -b:], vision[1].expand(2, -1, -1))
    patches = (tiny.spec.image_size // tiny.patch_size) ** 2
    assert vis_seen[1].shape[1] == 1 + patches + b  # [CLS, patches, prompts]
    # taps after vision layers 1 and 2 of 4; layers 3-4 never run, yet row 2 reaches the decoder through the
    # last tap's prompt slots (written after layer 2, as in the original)
    assert sorted(vis_seen) == [1, 2] and tiny.spec.max_prompt_depth == 3
    with torch.no_grad():
        taps = tiny.encode_vision(x, vision)
    assert torch.equal(taps[-1][:, -b:], vision[2].expand(2, -1, -1))


def test_shallow_prompts_are_carried_forward(tiny):
    x, tok = _inputs(tiny, n=2)
    row = torch.randn(4, tiny.spec.vision_width)
    seen, handles = _record_inputs(tiny.model.clip.vision_model.encoder.layers)
    try:
        with torch.no_grad():
            taps = tiny.encode_vision(x, [row])
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(seen[2], taps[0])  # J = 1: layer 2 sees layer 1's own outputs at the prompt slots
    assert not torch.allclose(taps[0][:, -4:], row.expand(2, -1, -1))


def test_vision_prompts_reach_logits_and_are_stripped_before_the_head(tiny):
    x, tok = _inputs(tiny, n=2)
    with torch.no_grad():
        base = tiny(x, tok["input_ids"], tok["attention_mask"])
        out = tiny(x, tok["input_ids"], tok["attention_mask"], Prompts(vision=[torch.randn(5, 40)]))
    assert out.logits.shape == base.logits.shape == (2, 1, 48, 48)
    assert out.tap.shape == base.tap.shape == (2, 16, 12, 12)  # CLS and 5 prompts removed from the grid
    assert not torch.allclose(out.logits, base.logits)


def test_image_features_are_projected_pooled_cls(tiny):
    x, _ = _inputs(tiny, n=2)
    vm = tiny.model.clip.vision_model
    with torch.no_grad():
        hidden = vm.pre_layrnorm(vm.embeddings(x, interpolate_pos_encoding=True))
        for layer in vm.encoder.layers:
            hidden = layer(hidden, None)
        ref = tiny.model.clip.visual_projection(vm.post_layernorm(hidden[:, 0]))
    assert torch.allclose(tiny.image_features(x), ref, atol=1e-6)


def test_embed_tokens_is_a_photo_of_a(tiny):
    emb = tiny.embed_tokens("a photo of a")
    table = tiny.model.clip.text_model.embeddings.token_embedding.weight
    assert torch.equal(emb, table[[320, 1125, 539, 320]])


# ---- upsampler ------------------------------------------------------------------------------------------


def test_patch_upsampler_shape_and_parameter_count():
    up = PatchUpsampler(64, 16)
    assert sum(p.numel() for p in up.parameters()) == 1601
    assert up(torch.randn(2, 64, 22, 22)).shape == (2, 1, 352, 352)
    assert up.conv.padding_mode == "replicate" and up.conv.kernel_size == (5, 5)


@pytest.mark.parametrize("mode", ["residual", "sum", "unused"])
def test_residual_upsampler_combination(mode):
    torch.manual_seed(0)
    res = ResidualUpsampler(PatchUpsampler(8, 4), mode)
    head, tap = torch.randn(2, 1, 16, 16), torch.randn(2, 8, 4, 4)
    up = res.block(tap)
    expected = {"residual": 0.5 * head + 0.5 * up, "sum": head + up, "unused": head}[mode]
    assert res.residual_ratio.item() == 0.5
    assert torch.allclose(res(head, tap), expected, atol=1e-6)


def test_upsampler_off_gives_the_frozen_head(tiny):
    model = build_model({"vlsm_config": "tiny", "learner": "vpt", "upsampler": False})
    x, tok = _inputs(model.vlsm, n=2)
    prompts = model.learner()
    with torch.no_grad():
        head = model.vlsm(x, tok["input_ids"], tok["attention_mask"], prompts).logits
        assert torch.equal(model(x, **tok), head)
    assert model.upsampler is None
    assert not any(n.startswith("upsampler") for n, _ in model.named_trainable_parameters())


# ---- loading --------------------------------------------------------------------------------------------


def test_local_checkpoint_directory_with_its_tokenizer(tiny, tmp_path):
    from trainables.tokenizer import clip_tokenizer

    tiny.model.save_pretrained(tmp_path)
    clip_tokenizer().save_pretrained(tmp_path)
    loaded = VLSMS.get("clipseg")(weights=str(tmp_path), image_size=48)
    assert loaded.tokenizer is not clip_tokenizer()  # the directory's own tokenizer
    x, tok = _inputs(tiny, n=2)
    with torch.no_grad():
        assert torch.equal(loaded(x, **loaded.tokenize(TEXTS[:2])).logits, tiny(x, **tok).logits)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.model.training


@pytest.mark.parametrize("kwargs, error, match", [
    ({"config": "cris-rn50"}, ConfigError, "unknown CLIPSeg config 'cris-rn50'; shipped: clipseg-rd64"),
    ({"config": "tiny", "colour": 1}, ConfigError, "unknown option.*'colour'.*allowed: image_size"),
    ({"config": "tiny", "image_size": 50}, ConfigError, "image_size 50 must be a multiple of the patch size 4"),
    ({"weights": "/no/such/dir"}, FileNotFoundError, "'/no/such/dir' is not a directory"),
])
def test_bad_inputs(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_clipseg(**kwargs)


def test_random_init_is_deterministic_and_seedable():
    a, b = build_clipseg(config="tiny"), build_clipseg(config="tiny")
    c = build_clipseg(config="tiny", init_seed=1)
    wa, wb, wc = (m.model.decoder.film_mul.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
