"""`tunevlseg describe`: build a prompted VLSM and report what it trains.

Answers "how many parameters does this learner train at this depth?" without a download: with no
`--weights`, the VLSM is a random-init model of a config shipped in the repo (counts do not depend on
the weights' values).
"""

from __future__ import annotations

import argparse
import json

NAME = "describe"
HELP = "print a learner's trainable/frozen parameter counts, resolved config and modalities"
DESCRIPTION = (HELP + ". Without --weights the VLSM is built offline with random init from a shipped config "
               "(clipseg: clipseg-rd64); parameter counts are the same as with real weights.")

# `--set` keys that belong to the model block rather than the learner config
MODEL_KEYS = ("upsampler", "upsampler_combine", "seed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vlsm", default="clipseg", help="VLSM name (clipseg, cris); default clipseg")
    parser.add_argument("--learner", required=True, help="learner name (coop, cocoop, vpt, maple, "
                        "shared_attention, shared_separate, e2e, lora, adapter)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="learner config field (e.g. prompt_depth=6), or one of the model fields "
                        f"{', '.join(MODEL_KEYS)}; repeatable")
    parser.add_argument("--weights", default=None, metavar="ID|DIR",
                        help="HF hub id or local checkpoint directory; default: random init, offline")
    parser.add_argument("--config", default=None, metavar="NAME",
                        help="shipped VLSM config for random init (e.g. clipseg-rd64, clipseg-rd64-refined, tiny)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    from trainables.config import parse_overrides
    from trainables.model import build_model

    overrides = parse_overrides(args.overrides)
    model_cfg = {k: overrides.pop(k) for k in MODEL_KEYS if k in overrides}
    cfg = {"vlsm": args.vlsm, "learner": args.learner, "learner_config": overrides, "weights": args.weights,
           "vlsm_config": args.config, **model_cfg}
    model = build_model(cfg)
    info = model.describe()
    if args.weights:
        info["weights"] = args.weights
    else:
        info["weights"] = None
        import sys

        default = getattr(sys.modules.get(type(model.vlsm).__module__), "DEFAULT_CONFIG", "default")
        info["note"] = (f"random-init {args.vlsm} from the shipped config {args.config or default!r} "
                        "(no weights given); parameter counts do not depend on the weights")
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    print(f"{info['display_name']} on {args.vlsm}")
    if info.get("note"):
        print(f"  note:             {info['note']}")
    else:
        print(f"  weights:          {info['weights']}")
    print(f"  modalities:       {', '.join(info['modalities']) or '-'} (VLSM accepts {', '.join(info['vlsm_modalities'])})")
    if info.get("attached_to"):
        print(f"  attached to:      {', '.join(info['attached_to'])} encoder(s) (modules inside the frozen VLSM)")
    print(f"  upsampler:        {info['upsampler'] or 'off'}")
    print(f"  trainable_params: {info['trainable_params']:,}")
    print(f"  frozen_params:    {info['frozen_params']:,}")
    for part, n in info["trainable_by_part"].items():
        print(f"    {part + ':':<16}{n:,}")
    print("  learner_config:")
    for key, value in info["learner_config"].items():
        print(f"    {key}: {json.dumps(value)}")
    return 0
