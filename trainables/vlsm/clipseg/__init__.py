"""CLIPSeg: catalog entry (torch-free). The adapter is `clipseg/adapter.py`, its architectures `clipseg/configs/`."""

from trainables.catalog import TEXT, VISION, VLSMCost, register_vlsm

# image_size: CLIPSeg's training resolution (the checkpoints' vision config says 224). max_prompt_depth of
# clipseg-rd64: min(12 text layers, 9 vision layers the decoder taps + 1); the adapter's spec has the value of
# the architecture it loaded.
register_vlsm("clipseg", "CLIPSeg", {TEXT, VISION}, factory="trainables.vlsm.clipseg.adapter:build_clipseg",
              image_size=352, max_prompt_depth=10,
              mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),  # ImageNet's, as HF's CLIPSeg processor
              mini="trainables.vlsm.clipseg.mini",  # `make pretrain-mini`
              # clipseg-rd64 at 352 px: 10 ViT-B/16 layers over 485 tokens are ~76 GFLOP forward; prompts in the
              # vision tower add ~76 of activation gradients, text-only prompts ~2; CoCoOp's meta-net an
              # un-prompted 12-layer pass (~91); E2E's weight gradients ~154. The cache skips the 10 tapped
              # layers (76), or the 12-layer pass giving CoCoOp's pooled embedding (91).
              cost=VLSMCost(forward=76, text_grad=2, vision_grad=76, weight_grad=154, image_features=91,
                            cached_image_pass=76, cached_image_features=91))
