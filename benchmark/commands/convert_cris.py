"""`tunevlseg convert-cris SRC DST`: validate the community CRIS checkpoint and write it as safetensors.

SRC is the checkpoint as shared in CRIS.pytorch issue #3 (`{"state_dict": {"module.backbone...": ...}}`) or a
plain/stripped state dict. Every key and shape is checked against the CRIS built from `--config`; problems are
printed (missing, unexpected, mismatched keys) and the command exits 1 without writing anything.

`--clip-rn50 RN50.pt` instead starts from OpenAI's CLIP RN50 weights (TorchScript archive or state dict): the
backbone gets them, neck/decoder/projector keep a seeded random init (CRIS's own training starting point).
"""

from __future__ import annotations

import argparse

NAME = "convert-cris"
HELP = "convert the community CRIS checkpoint (or OpenAI CLIP RN50 weights) to a validated safetensors file"
DESCRIPTION = __doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", nargs="?", help="community CRIS checkpoint (.pth) or plain state dict")
    parser.add_argument("dst", help="output .safetensors file")
    parser.add_argument("--clip-rn50", metavar="PATH",
                        help="build from OpenAI's RN50.pt (TorchScript or state dict) instead of a CRIS checkpoint")
    parser.add_argument("--config", default="cris-rn50",
                        help="CRIS config: cris-rn50 (default), tiny, or a .json file")
    parser.add_argument("--seed", type=int, default=0, help="seed for the parts --clip-rn50 leaves random")
    parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    parser.add_argument("--all-keys", action="store_true", help="list every problem key (default: first 25 each)")


def run(args: argparse.Namespace) -> int:
    from trainables.catalog import VLSMS

    # The converter lives in the VLSM's folder and is registered on its catalog card (`converter=`).
    return VLSMS.get("cris").convert(args.src, args.dst, clip_rn50=args.clip_rn50, config=args.config,
                                     seed=args.seed, force=args.force, all_keys=args.all_keys)
