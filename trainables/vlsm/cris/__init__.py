"""CRIS: catalog entry (torch-free). The adapter is `cris/adapter.py`, the model `cris/model.py`, the converter of
the community checkpoint `cris/convert.py`, its architectures `cris/configs/`."""

from trainables.catalog import TEXT, VLSMCost, register_vlsm

# A ResNet image encoder: text prompts only, so learners that prompt the vision encoder are not viable on it.
# image_size and max_prompt_depth: those of cris-rn50 (416 px, 12 text transformer layers).
register_vlsm("cris", "CRIS", {TEXT}, factory="trainables.vlsm.cris.adapter:cris_factory", image_size=416,
              max_prompt_depth=12,
              mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711),  # OpenAI CLIP's
              converter="trainables.vlsm.cris.convert:convert_command",  # `tunevlseg convert-cris`
              mini="trainables.vlsm.cris.mini",  # `make pretrain-mini`
              # cris-rn50 at 416 px: ~40 GFLOP forward; text prompts back-propagate through its neck and decoder
              # (~40); CoCoOp's image-conditioned prompts ~15 more; E2E's weight gradients ~80. The cache skips
              # the RN50 (40) for either kind of text-prompt learner.
              cost=VLSMCost(forward=40, text_grad=40, vision_grad=None, weight_grad=80, image_features=15,
                            cached_image_pass=40, cached_image_features=40))
