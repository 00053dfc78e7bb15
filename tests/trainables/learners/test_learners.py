"""Context learners on every viable VLSM: shapes, gradients, determinism, depth bounds, parameter counts."""

import dataclasses
import json

import pytest
import torch

from benchmark.cli import main as cli_main
from trainables.catalog import LEARNERS, TEXT, VISION, VLSMS, is_viable
from trainables.config import ConfigError, from_dict
from trainables.model import ModelConfig, PromptedVLSM, build_model

# Tiny VLSMs are narrow: shrink the widths the learners add on top of them.
TINY_LEARNER = {"cocoop": {"intermediate_dim": 8}, "maple": {"intermediate_dim": 8},
                "shared_attention": {"nhead": 4, "dim_feedforward": 48}, "shared_separate": {"shared_dim": 8}}
PAIRS = [(v, learner) for v in VLSMS.names() for learner in LEARNERS.names()]
_TINY_CACHE: dict = {}


def tiny_vlsm(vlsm: str):
    if vlsm not in _TINY_CACHE:
        _TINY_CACHE[vlsm] = VLSMS.get(vlsm)(config="tiny")
    return _TINY_CACHE[vlsm]


def make(vlsm: str, learner: str, seed: int | None = 0, **learner_config):
    """A tiny model. Depth = min(3, the VLSM's max) so deep replacement is exercised. (A fresh tiny VLSM
    per model: E2E unfreezes and trains it.)"""
    adapter = VLSMS.get(vlsm)(config="tiny")
    if not is_viable(learner, adapter.spec.modalities):
        pytest.skip(f"{learner} is not viable on {vlsm}")
    cfg = {**TINY_LEARNER.get(learner, {}), **learner_config}
    if has_depth(learner):
        cfg.setdefault("prompt_depth", min(3, adapter.spec.max_prompt_depth))
    torch.manual_seed(0)  # same random-init VLSM every time, whether or not its factory seeds itself
    return build_model({"vlsm": vlsm, "vlsm_config": "tiny", "learner": learner, "learner_config": cfg,
                        "seed": seed})


def has_depth(learner: str) -> bool:
    """A prompt depth to set: prompt learners have one; E2E and the learners that attach to the encoders
    (LoRA, adapters) do not."""
    return "prompt_depth" in {f.name for f in dataclasses.fields(LEARNERS.get(learner).config_cls)}


def attached_names(model) -> set[str]:
    """Names of the trainable parameters a learner attached inside the VLSM (LoRA, adapters)."""
    ids = {id(p) for m in model.learner.attached for p in m.parameters() if p.requires_grad}
    return {n for n, p in model.named_trainable_parameters() if id(p) in ids}


def batch(model, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = model.spec.image_size
    x = torch.randn(n, 3, size, size, generator=g)
    return x, model.tokenize(["polyp.", "a big red polyp in the colon."][:n])


def trainable_state(model):
    return {n: p.detach().clone() for n, p in model.named_trainable_parameters()}


# ---- every learner x every viable VLSM ------------------------------------------------------------------


@pytest.mark.parametrize("vlsm, learner", PAIRS)
def test_output_shape_and_gradients_reach_exactly_the_trainable_parameters(vlsm, learner):
    model = make(vlsm, learner).train()
    x, tok = batch(model)
    logits = model(x, **tok)
    s = model.spec.image_size
    assert logits.shape == (2, 1, s, s) and torch.isfinite(logits).all()
    (logits * torch.randn_like(logits)).sum().backward()
    trainable = dict(model.named_trainable_parameters())
    if learner == "e2e":
        assert len(trainable) == len(list(model.parameters()))  # nothing frozen
        assert model.vlsm.training
        reached = {n for n, p in trainable.items() if p.grad is not None and p.grad.abs().sum() > 0}
        for module in model.vlsm.encoder_modules():  # both encoders and the decoder learn
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
        assert any(n.startswith("vlsm.model.decoder") for n in reached)
        return
    assert not model.vlsm.training and model.learner.training  # frozen VLSM stays in eval mode
    inside = attached_names(model) if model.learner.attaches else set()
    assert trainable and all(n.startswith(("learner.", "upsampler.")) or n in inside for n in trainable)
    assert any(n.startswith("upsampler.") for n in trainable)
    if model.learner.attaches:
        assert inside and all(n.startswith("vlsm.") for n in inside)
        assert all(m.training for m in model.learner.attached)  # e.g. LoRA dropout is live in training
        # LoRA starts with B = 0, which blocks A's gradient at step 0: take the first step's state instead.
        model.zero_grad()
        with torch.no_grad():
            for p in trainable.values():
                p.add_(torch.randn_like(p) * 0.05)
        (model(x, **tok) * torch.randn_like(logits)).sum().backward()
    for name, p in trainable.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"
    for name, p in model.named_parameters():
        if name not in trainable:
            assert p.grad is None, f"frozen {name} got a gradient"


@pytest.mark.parametrize("vlsm, learner", PAIRS)
def test_seeded_construction_is_deterministic(vlsm, learner):
    a, b = trainable_state(make(vlsm, learner, seed=3)), trainable_state(make(vlsm, learner, seed=3))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if learner != "e2e":  # E2E has no learner/upsampler to seed
        c = trainable_state(make(vlsm, learner, seed=4))
        assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("vlsm, learner", PAIRS)
def test_artifact_round_trip_reproduces_logits(vlsm, learner, tmp_path):
    trained = make(vlsm, learner, seed=0).eval()
    with torch.no_grad():  # stand-in for training: move every trainable tensor away from its init
        for _, p in trained.named_trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, tok = batch(trained)
    with torch.no_grad():
        expected = trained(x, **tok)
    trained.save_artifact(tmp_path)
    fresh = make(vlsm, learner, seed=1).eval()
    with torch.no_grad():
        assert not torch.equal(fresh(x, **tok), expected)
        fresh.load_artifact(tmp_path)
        assert torch.equal(fresh(x, **tok), expected)


@pytest.mark.parametrize("vlsm, learner", [p for p in PAIRS if has_depth(p[1])])
def test_depth_bounds(vlsm, learner):
    for bad in (0, 12):
        with pytest.raises(ConfigError, match=rf"learner '{learner}' prompt_depth: {bad} is outside \[1, 11\]"):
            make(vlsm, learner, prompt_depth=bad)
    deepest = tiny_vlsm(vlsm).spec.max_prompt_depth
    if deepest < 11:
        with pytest.raises(ConfigError, match=rf"prompt_depth: {deepest + 1} exceeds .* allowed: 1..{deepest}"):
            make(vlsm, learner, prompt_depth=deepest + 1)


def test_viability_follows_modalities(monkeypatch):
    assert is_viable("e2e", frozenset()) and is_viable("coop", frozenset({TEXT}))
    assert not is_viable("vpt", frozenset({TEXT})) and not is_viable("maple", frozenset({TEXT}))
    clip_factory = VLSMS.get("clipseg")

    def text_only(**kwargs):
        adapter = clip_factory(**kwargs)
        adapter.spec = dataclasses.replace(adapter.spec, name="textonly", modalities=frozenset({TEXT}))
        return adapter

    monkeypatch.setitem(VLSMS._entries, "textonly", text_only)
    with pytest.raises(ConfigError, match="learner 'vpt' prompts the vision encoder, which textonly does not "
                                          "have; viable learners for textonly: adapter, cocoop, coop, e2e, lora"):
        build_model({"vlsm": "textonly", "vlsm_config": "tiny", "learner": "vpt"})


# ---- learner specifics ----------------------------------------------------------------------------------


def test_photo_init_row0_and_gaussian_rest():
    model = make("clipseg", "coop", prompt_depth=3, vector_std=0.5)
    ctx = model.learner.context_vectors
    assert torch.equal(ctx[0], model.vlsm.embed_tokens("a photo of a"))
    assert 0.3 < ctx[1:].std().item() < 0.7
    gauss = make("clipseg", "maple", context_init=None).learner.context_vectors
    assert gauss.shape == (3, 4, 32) and abs(gauss.std().item() - 0.02) < 0.01
    with pytest.raises(ConfigError, match="num_context: 8 but context_init 'a photo of a' gives 4 tokens"):
        make("clipseg", "coop", num_context=8)
    with pytest.raises(ConfigError, match="learner 'vpt' context_init: .*allowed: null"):
        make("clipseg", "vpt", context_init="a photo of a")
    assert make("clipseg", "coop", num_context=8, context_init=None).learner.context_vectors.shape == (3, 8, 32)


def test_cocoop_prompts_depend_on_the_image():
    model = make("clipseg", "cocoop").eval()
    assert model.learner.needs_image_features
    x, _ = batch(model)
    prompts = model.learner(model.vlsm.image_features(x))
    assert len(prompts.text) == 3 and prompts.vision is None
    assert prompts.text[0].shape == (2, 4, 32) and not torch.allclose(prompts.text[0][0], prompts.text[0][1])
    net = model.learner.meta_nets[0]  # Linear(D, r, bias) -> ReLU -> Linear(r, Hl, no bias) -> LN(no bias)
    assert net[0].bias is not None and net[2].bias is None and net[3].bias is None
    lora = make("clipseg", "cocoop", use_lora=True).learner.meta_nets[0]
    assert [type(m).__name__ for m in lora] == ["Linear", "Linear", "LayerNorm"] and lora[0].bias is None


def test_maple_vision_prompts_are_projections_of_text_context():
    learner = make("clipseg", "maple").learner
    prompts = learner()
    for k in range(3):
        assert torch.equal(prompts.text[k], learner.context_vectors[k])
        assert torch.allclose(prompts.vision[k], learner.projections[k](learner.context_vectors[k]))
        assert prompts.vision[k].shape == (4, 40)


@pytest.mark.parametrize("attend", [True, False])
def test_shared_attention_attend_across_prompts_flag(attend):
    learner = make("clipseg", "shared_attention", attend_across_prompts=attend).learner.eval()
    before = learner()
    with torch.no_grad():
        learner.context_vectors[0, 3] += 1.0
    after = learner()
    token0_changed = not torch.allclose(before.text[0][0], after.text[0][0])
    assert token0_changed == attend  # the original (attend=False) never mixes the B tokens
    assert before.text[0].shape == (4, 32) and before.vision[0].shape == (4, 40)


@pytest.mark.parametrize("learner, modules", [("shared_attention", "layers"), ("shared_separate", "text_projections")])
def test_identical_init_across_depths_flag(learner, modules):
    def first_weights(**kw):
        mods = getattr(make("clipseg", learner, **kw).learner, modules)
        return [next(m.parameters()) for m in mods]

    same = first_weights(identical_init_across_depths=True)
    assert all(torch.equal(same[0], w) for w in same[1:]) and same[0].data_ptr() != same[1].data_ptr()
    independent = first_weights()
    assert not torch.equal(independent[0], independent[1])


def test_shared_separate_projection_norm_flag():
    paper = make("clipseg", "shared_separate").learner.text_projections[0]
    original = make("clipseg", "shared_separate", projection_norm=False).learner.text_projections[0]
    assert [type(m).__name__ for m in paper] == ["Linear", "LayerNorm"] and paper[0].bias is None
    assert [type(m).__name__ for m in original] == ["Linear"] and original[0].bias is not None


@pytest.mark.parametrize("learner, combine, used", [("coop", "original", False), ("vpt", "original", True),
                                                     ("maple", "original", True), ("coop", "residual", True)])
def test_upsampler_combine_original(learner, combine, used):
    model = build_model({"vlsm_config": "tiny", "learner": learner, "upsampler_combine": combine,
                         "learner_config": {"prompt_depth": 2, **TINY_LEARNER.get(learner, {})}})
    expected_mode = {"coop": "unused", "vpt": "sum"}.get(learner, "residual") if combine == "original" else combine
    assert model.upsampler.mode == expected_mode
    x, tok = batch(model)
    model(x, **tok).sum().backward()
    assert (model.upsampler.block.conv.weight.grad is not None) == used
    assert (model.upsampler.residual_ratio.grad is not None) == (expected_mode == "residual")
    with pytest.raises(ConfigError, match="upsampler_combine: 'half' is not allowed; allowed: residual, sum"):
        ModelConfig(upsampler_combine="half")


def test_param_groups_follow_reference_split():
    model = make("clipseg", "shared_attention")
    groups = {g["name"]: g for g in model.param_groups(1e-3)}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    named = dict(model.named_trainable_parameters())
    assert groups["decay"]["weight_decay"] == 1e-3 and groups["no_decay"]["weight_decay"] == 0.0
    for name, p in named.items():
        # Linear/Conv weights (incl. MHA out_proj, FFN, conv) and in_proj_weight decay; norms etc. do not
        decays = name.endswith("proj_weight") or (name.endswith(".weight") and ".norm" not in name)
        assert (id(p) in ids["decay"]) == decays, name
    assert id(named["learner.context_vectors"]) in ids["no_decay"]
    assert id(named["upsampler.residual_ratio"]) in ids["no_decay"]
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == model.count_parameters()[0]
    opt = torch.optim.AdamW(model.param_groups(1e-3), lr=1e-3)  # the groups are valid AdamW input
    assert len(opt.param_groups) == 2


def test_e2e_can_freeze_the_encoders():
    model = make("clipseg", "e2e", train_encoders=False)
    decoder = sum(p.numel() for p in model.vlsm.model.decoder.parameters())
    assert model.count_parameters()[0] == decoder
    with pytest.raises(ConfigError, match="learner 'e2e' unknown key 'prompt_depth'"):
        make("clipseg", "e2e", prompt_depth=2)


def test_unknown_learner_and_key():
    with pytest.raises(Exception, match=r"unknown learner 'cop' \(did you mean 'coop'\?\); allowed: adapter, cocoop, coop, e2e"):
        build_model({"learner": "cop", "vlsm_config": "tiny"})
    with pytest.raises(ConfigError, match="unknown key 'depth'; allowed: prompt_depth"):
        build_model({"learner": "coop", "vlsm_config": "tiny", "learner_config": {"depth": 2}})


# ---- parameter counts at the original's settings (reference §8), full-size CLIPSeg ------------------------

# (learner, learner config, trainable params with the upsampler, "original" flags on where they change counts)
COUNTS = [
    ("coop", {"prompt_depth": 1}, 3_650), ("coop", {"prompt_depth": 6}, 13_890), ("coop", {"prompt_depth": 11}, 24_130),
    ("coop", {"prompt_depth": 6, "num_context": 8, "context_init": None}, 26_178),
    ("cocoop", {"prompt_depth": 1}, 69_762), ("cocoop", {"prompt_depth": 11}, 751_362),
    ("cocoop", {"prompt_depth": 11, "num_context": 8, "context_init": None}, 773_890),
    ("cocoop", {"prompt_depth": 1, "use_lora": True, "intermediate_dim": 129}, 132_608 + 2_048 + 1_602),
    ("cocoop", {"prompt_depth": 1, "intermediate_dim": 129}, 132_737 + 2_048 + 1_602),
    ("cocoop", {"prompt_depth": 1, "use_lora": True, "intermediate_dim": 32}, 33_280 + 2_048 + 1_602),
    ("vpt", {"prompt_depth": 1}, 4_674), ("vpt", {"prompt_depth": 6}, 20_034),
    ("vpt", {"prompt_depth": 11, "num_context": 8}, 69_186),
    ("maple", {"prompt_depth": 1}, 87_170), ("maple", {"prompt_depth": 6}, 515_010),
    ("maple", {"prompt_depth": 11}, 942_850),
    ("maple", {"prompt_depth": 6, "num_context": 8, "context_init": None}, 527_298),
    ("maple", {"prompt_depth": 1, "use_lora": True, "intermediate_dim": 96}, 124_416 + 2_048 + 1_602),
    ("maple", {"prompt_depth": 1, "intermediate_dim": 32}, 42_528 + 2_048 + 1_602),
    ("shared_attention", {"prompt_depth": 1}, 9_849_922),
    ("shared_attention", {"prompt_depth": 1, "num_context": 8}, 9_855_042),
    ("shared_attention", {"prompt_depth": 1, "dim_feedforward": 1420, "nhead": 20}, 10_201_740 + 5_120 + 1_602),
    ("shared_separate", {"prompt_depth": 1, "projection_norm": False}, 85_058),
    ("shared_separate", {"prompt_depth": 6, "projection_norm": False}, 502_338),
    ("shared_separate", {"prompt_depth": 11, "projection_norm": False}, 919_618),
    ("shared_separate", {"prompt_depth": 11, "num_context": 8, "projection_norm": False}, 922_434),
    ("shared_separate", {"prompt_depth": 1, "shared_dim": 32, "projection_norm": False}, 16_896 + 25_344 + 128 + 1_602),
]


@pytest.fixture(scope="module")
def rd64():
    # Reference §8 counts are identical for rd64 and rd64-refined; refined also covers the complex head.
    return VLSMS.get("clipseg")(config="clipseg-rd64-refined")


def _on(adapter, learner, config, upsampler=True):
    entry = LEARNERS.get(learner)
    cfg = ModelConfig(learner=learner, learner_config=config, upsampler=upsampler, upsampler_combine="original")
    return PromptedVLSM(cfg, adapter, entry, from_dict(entry.config_cls, config))


@pytest.mark.parametrize("learner, config, expected", COUNTS, ids=lambda v: json.dumps(v) if isinstance(v, dict) else str(v))
def test_trainable_parameter_counts_match_reference(rd64, learner, config, expected):
    trainable, frozen = _on(rd64, learner, config).count_parameters()
    assert (trainable, frozen) == (expected, 150_747_746)
    assert _on(rd64, learner, config, upsampler=False).count_parameters()[0] == expected - 1_602


def test_paper_semantics_counts_differ_only_where_documented(rd64):
    # Shared Separate with LayerNorm (paper): + LN weight and bias 2·(512+768), - Linear biases (512+768)
    # per depth; the Shared Attention flags change no count.
    assert _on(rd64, "shared_separate", {"prompt_depth": 6}).count_parameters()[0] == 502_338 + 6 * 1_280
    assert _on(rd64, "shared_attention", {"attend_across_prompts": False,
               "identical_init_across_depths": True}).count_parameters()[0] == 9_849_922


def test_full_size_zero_shot_equals_hf_and_prompts_fit(rd64):
    x = torch.randn(2, 3, 64, 64)  # small input: the full 12+12-layer model, position interpolation to 4x4
    tok = rd64.tokenize(["polyp.", "a big red polyp"])
    model = _on(rd64, "maple", {"prompt_depth": 11}).eval()
    with torch.no_grad():
        ours = rd64(x, **tok).logits
        hf = rd64.model(pixel_values=x, **tok).logits
        prompted = model(x, **tok)
    assert rd64.spec.max_prompt_depth == 11 and rd64.vision_layers_run == 10
    assert torch.allclose(ours[:, 0], hf, atol=1e-5, rtol=0)
    assert prompted.shape == (2, 1, 64, 64) and not torch.allclose(prompted, ours)


def test_e2e_trains_everything(rd64):
    # Separate adapter instance would cost another full build; E2E only flips requires_grad, so restore it.
    model = _on(rd64, "e2e", {})
    try:
        assert model.count_parameters() == (150_747_746, 0)
    finally:
        rd64.requires_grad_(False).eval()


# ---- describe CLI -----------------------------------------------------------------------------------------


def test_describe_json_counts_tiny(capsys):
    assert cli_main(["describe", "--learner", "vpt", "--config", "tiny", "--set", "prompt_depth=2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # 2 x 4 x 40 prompt tokens + upsampler (16 channels x 25 + 1) + rho
    assert info["trainable_params"] == 2 * 4 * 40 + 16 * 25 + 1 + 1
    assert info["modalities"] == [VISION] and info["learner_config"]["prompt_depth"] == 2
    assert info["weights"] is None and "random-init clipseg" in info["note"] and "'tiny'" in info["note"]


def test_describe_default_is_offline_rd64(capsys):
    assert cli_main(["describe", "--learner", "maple", "--set", "prompt_depth=6", "--set", "upsampler=false"]) == 0
    out = capsys.readouterr().out
    assert "trainable_params: 513,408" in out and "frozen_params:    150,693,890" in out
    assert "shipped config 'clipseg-rd64'" in out and "upsampler:        off" in out


def test_describe_bad_input_is_one_line(capsys):
    assert cli_main(["describe", "--learner", "coop", "--config", "tiny", "--set", "prompt_depth=12"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "tunevlseg describe: error: learner 'coop' prompt_depth: 12 is outside [1, 11]"
