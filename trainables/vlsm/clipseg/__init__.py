"""CLIPSeg: catalog entry (torch-free). The adapter is `clipseg/adapter.py`, its architectures `clipseg/configs/`."""

from trainables.catalog import TEXT, VISION, register_vlsm

# image_size: CLIPSeg's training resolution (the checkpoints' vision config says 224). max_prompt_depth of
# clipseg-rd64: min(12 text layers, 9 vision layers the decoder taps + 1); the adapter's spec has the value of
# the architecture it loaded.
register_vlsm("clipseg", "CLIPSeg", {TEXT, VISION}, factory="trainables.vlsm.clipseg.adapter:build_clipseg",
              image_size=352, max_prompt_depth=10)
