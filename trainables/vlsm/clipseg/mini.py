"""CLIPSeg's mini model: its architecture and pretraining hooks for `trainables.mini.pretrain` (registered on
the catalog card as `mini=`). Torch code: imported only by the pretraining script."""

from __future__ import annotations

from pathlib import Path

import torch

# CLIPSeg at 96 px: ViT with 8-px patches (12x12 tokens), 6 vision and 6 text layers, narrow widths.
ARCHITECTURE = {
    "text_config": {"vocab_size": 49408, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 6,
                    "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": 0,
                    "eos_token_id": 2, "pad_token_id": 1},
    "vision_config": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 6,
                      "num_attention_heads": 4, "image_size": 96, "patch_size": 8},
    "projection_dim": 64, "reduce_dim": 32, "extract_layers": [1, 3, 5],
    "decoder_num_attention_heads": 4, "decoder_intermediate_size": 128, "conditional_layer": 0,
    "use_complex_transposed_convolution": False,
}
STEPS = 3000  # sized to fit in ~20 min on 2 CPU cores


def build(seed: int):
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    torch.manual_seed(seed)
    return CLIPSegForImageSegmentation(CLIPSegConfig(**ARCHITECTURE))


def logits(model, x, tokens):
    out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=x)
    return out.logits.reshape(x.shape[0], 1, *x.shape[-2:])


def save(model, out_dir: Path, image_size: int) -> None:
    """HF `save_pretrained` (config.json + model.safetensors), so the mini model loads like real weights; fp16
    to keep the committed files small (the adapter loads frozen weights as fp32)."""
    model.config.segmentation_image_size = image_size  # read by the adapter (default 352 otherwise)
    model.to(torch.float16).save_pretrained(out_dir)
