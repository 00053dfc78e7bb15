"""The adapter contract's speed paths, on every VLSM of the catalog: image-conditioned prompts (`PromptFn`)
from the adapter's own image pass, and the text encoder run once per distinct prompt (`text_index`). Each must
give what the plain path gives, while running the frozen encoders fewer times."""

import pytest
import torch
from torch import nn

from trainables.catalog import VLSMS
from trainables.model import build_model
from trainables.vlsm.base import Prompts

TEXTS = ["polyp.", "a photo of a tumour.", "polyp.", "polyp."]


def _image_entry(adapter) -> nn.Module:
    """The module every image pass starts with: the one convolution that reads RGB pixels (a ViT's patch
    embedding, a ResNet's stem)."""
    (entry,) = [m for m in adapter.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3]
    return entry


def _token_embedding(adapter) -> nn.Module:
    """The text encoder's token embedding: its largest embedding table (the vocabulary; positions are fewer)."""
    return max((m for m in adapter.modules() if isinstance(m, nn.Embedding)), key=lambda m: m.num_embeddings)


@pytest.fixture(scope="module", params=VLSMS.names())
def adapter(request):
    """(adapter, its image-encoder entry module, its token embedding), built from the VLSM's tiny config."""
    a = VLSMS.get(request.param)(config="tiny")
    return a, _image_entry(a), _token_embedding(a)


class _Conditioned(nn.Module):
    """A CoCoOp-like prompt function: per-image text prompts shifted by a projection of the image features."""

    def __init__(self, adapter, depth=2):
        super().__init__()
        spec = adapter.spec
        self.ctx = nn.Parameter(torch.randn(depth, 3, spec.text_width) * 0.02)
        self.meta = nn.Linear(spec.image_feature_dim, spec.text_width)
        self.seen = []

    def forward(self, feats):
        self.seen.append(feats)
        return Prompts(text=[row[None] + self.meta(feats)[:, None] for row in self.ctx])


def _count_calls(module):
    calls = []
    return calls, module.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))


def _inputs(adapter, texts=TEXTS):
    g = torch.Generator().manual_seed(0)
    s = adapter.spec.image_size
    return torch.randn(len(texts), 3, s, s, generator=g), adapter.tokenize(list(texts))


def test_prompt_fn_reads_one_image_pass_and_equals_two_passes(adapter):
    vlsm, image_entry, _ = adapter
    x, tok = _inputs(vlsm)
    learner = _Conditioned(vlsm)
    calls, hook = _count_calls(image_entry)
    try:
        out = vlsm(x, tok["input_ids"], tok["attention_mask"], learner)
    finally:
        hook.remove()
    assert len(calls) == 1  # features and segmentation from the same frozen image pass
    feats = vlsm.image_features(x)
    torch.testing.assert_close(learner.seen[0], feats)
    with torch.no_grad():
        ref = vlsm(x, tok["input_ids"], tok["attention_mask"], learner(feats))
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.tap, ref.tap, atol=1e-5, rtol=0)
    out.logits.sum().backward()  # the prompt function trains through that pass
    assert learner.ctx.grad.abs().sum() > 0 and learner.meta.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("prompts", ["none", "shared", "per_image"])
def test_text_index_encodes_each_distinct_prompt_once(adapter, prompts):
    vlsm, _, token_embedding = adapter
    x, full = _inputs(vlsm)
    distinct = vlsm.tokenize(["polyp.", "a photo of a tumour."])
    index = torch.tensor([0, 1, 0, 0])
    width = vlsm.spec.text_width
    made = {"none": None, "shared": Prompts(text=[torch.randn(3, width) * 0.02 for _ in range(2)]),
            "per_image": _Conditioned(vlsm)}[prompts]
    calls, hook = _count_calls(token_embedding)
    try:
        with torch.no_grad():
            dedup = vlsm(x, distinct["input_ids"], distinct["attention_mask"], made, text_index=index)
    finally:
        hook.remove()
    with torch.no_grad():
        ref = vlsm(x, full["input_ids"], full["attention_mask"], made)
    # per-image prompts cannot share the text encoder: it runs on one row per image
    assert calls == [4 if prompts == "per_image" else 2]
    torch.testing.assert_close(dedup.logits, ref.logits, atol=1e-4, rtol=1e-4)  # batch size changes BLAS blocking


@pytest.mark.parametrize("vlsm,learner", [("clipseg", "cocoop"), ("clipseg", "maple"), ("cris", "cocoop"),
                                          ("cris", "coop")])
def test_model_tokenize_batch_gives_the_per_image_result(vlsm, learner):
    model = build_model({"vlsm": vlsm, "vlsm_config": "tiny", "learner": learner,
                         "learner_config": {"context_init": None}})
    x, _ = _inputs(model.vlsm)
    batch = model.tokenize_batch(TEXTS)
    assert batch["input_ids"].shape[0] == 2 and batch["text_index"].tolist() == [0, 1, 0, 0]
    full = model.tokenize(TEXTS)
    with torch.no_grad():
        ours = model(x, **batch)
        ref = model(x, **full)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
