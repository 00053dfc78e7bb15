"""`tunevlseg convert-cris SRC DST`: validate the community CRIS checkpoint and write it as safetensors.

SRC is the checkpoint as shared in CRIS.pytorch issue #3 (`{"state_dict": {"module.backbone...": ...}}`) or a
plain/stripped state dict. Every key and shape is checked against the CRIS built from `--config`; problems are
printed (missing, unexpected, mismatched keys) and the command exits 1 without writing anything.

`--clip-rn50 RN50.pt` instead starts from OpenAI's CLIP RN50 weights (TorchScript archive or state dict): the
backbone gets them, neck/decoder/projector keep a seeded random init (CRIS's own training starting point).
"""

from __future__ import annotations

import argparse
import sys

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
    from pathlib import Path

    import torch

    from trainables.config import ConfigError
    from trainables.vlsm.cris.convert import CheckpointError, check_state_dict, load_clip_rn50, read_cris_state, save_converted
    from trainables.vlsm.cris.model import CRIS, config_to_dict, load_cris_config

    if bool(args.src) == bool(args.clip_rn50):
        raise ConfigError("give either SRC (a CRIS checkpoint) or --clip-rn50 PATH, not both or neither")
    dst = Path(args.dst)
    if dst.exists() and not args.force:
        raise ConfigError(f"{dst} exists; pass --force to overwrite it")
    cfg = load_cris_config(args.config)
    limit = None if args.all_keys else 25

    try:
        if args.src:
            with torch.device("meta"):  # shapes only: no need to allocate 147 M random weights
                model = CRIS(cfg)
            state = read_cris_state(args.src)
            report = check_state_dict(state, model)
            source = Path(args.src).name
        else:
            torch.manual_seed(args.seed)
            model = CRIS(cfg)
            report = load_clip_rn50(model, args.clip_rn50)
            state = model.state_dict()
            source = f"clip-rn50:{Path(args.clip_rn50).name}"
    except CheckpointError as e:
        if e.report is None:
            raise
        report = e.report
        state = None

    if state is None or not report.ok:
        print("\n".join(report.lines(limit)))
        print(f"tunevlseg convert-cris: error: {args.src or args.clip_rn50} does not fit CRIS "
              f"config {args.config!r}: {report.summary()}; nothing written", file=sys.stderr)
        return 1
    expected = model.state_dict()
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    save_converted(state, dst, config_to_dict(cfg), source)
    values = sum(v.numel() for v in state.values())
    print(f"wrote {dst}: {len(state)} tensors, {values:,} values (config {args.config})")
    return 0
