"""CRIS's mini model: its architecture and pretraining hooks for `trainables.mini.pretrain` (registered on the
catalog card as `mini=`). Torch code: imported only by the pretraining script."""

from __future__ import annotations

from pathlib import Path

# CRIS at 96 px: a narrow ResNet (width 16, stages 1-2-2-1), a 6-layer 64-wide CLIP text transformer and a
# 2-layer vision-language decoder; same modules and key names as cris-rn50.
ARCHITECTURE = {
    "embed_dim": 128, "image_resolution": 96, "vision_layers": [1, 2, 2, 1], "vision_width": 16,
    "context_length": 77, "vocab_size": 49408, "transformer_width": 64, "transformer_heads": 4,
    "transformer_layers": 6, "fpn_in": [128, 256, 128], "fpn_out": [32, 64, 128], "vis_dim": 64,
    "word_dim": 128, "num_layers": 2, "num_head": 4, "dim_ffn": 256, "dropout": 0.0, "img_size": 96,
}
STEPS = 2000  # sized to fit in ~20 min on 2 CPU cores


def build(seed: int):
    from trainables.vlsm.cris.adapter import cris_factory

    adapter = cris_factory(config=dict(ARCHITECTURE), init_seed=seed)
    adapter.requires_grad_(True)
    return adapter


def logits(adapter, x, tokens):
    return adapter(x, tokens["input_ids"], tokens["attention_mask"], None).logits


def save(adapter, out_dir: Path, image_size: int) -> None:
    """The `convert-cris` safetensors file, so the mini model loads like real weights; fp16 to keep the
    committed file small (the adapter loads frozen weights as fp32). The image size is in ARCHITECTURE."""
    from trainables.vlsm.cris.convert import save_converted

    state = {k: (v.half() if v.is_floating_point() else v) for k, v in adapter.model.state_dict().items()}
    save_converted(state, out_dir / "cris-mini.safetensors", ARCHITECTURE, source="make pretrain-mini")
