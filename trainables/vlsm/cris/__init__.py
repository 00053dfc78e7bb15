"""CRIS: catalog entry (torch-free). The adapter is `cris/adapter.py`, the model `cris/model.py`, the converter of
the community checkpoint `cris/convert.py`, its architectures `cris/configs/`."""

from trainables.catalog import TEXT, register_vlsm

# A ResNet image encoder: text prompts only, so learners that prompt the vision encoder are not viable on it.
# image_size and max_prompt_depth: those of cris-rn50 (416 px, 12 text transformer layers).
register_vlsm("cris", "CRIS", {TEXT}, factory="trainables.vlsm.cris.adapter:cris_factory", image_size=416,
              max_prompt_depth=12)
