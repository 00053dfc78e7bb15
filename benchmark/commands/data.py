"""`tunevlseg data {list,check,prepare,make-synthetic}`: inspect, validate and lay out the datasets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "data"
HELP = "list data cards, check a dataset on disk, lay out a download (prepare), write the synthetic sets"
DESCRIPTION = HELP + ". See docs/data.md for where to get each dataset."
# Downloads `prepare` converts (trainables.data.prepare and prepare_medical); listed here so that --help
# needs no imports.
PREPARE_NAMES = ("cityscapes", "voc", "busi", "bkai", "clinicdb", "isic", "dfu", "chexlocalize")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    sub.add_parser("list", help="the data cards: name, domain, layout, split counts")

    check = sub.add_parser("check", help="validate a dataset on disk against its card (exit 1 on problems)")
    check.add_argument("name", help="card name (e.g. kvasir) or path to a card YAML")
    check.add_argument("--root", required=True, help="the dataset folder (holding images/, masks/, ...)")
    check.add_argument("--split", action="append", choices=("train", "val", "test"),
                       help="check only this split (repeatable; default: all)")
    check.add_argument("--subset", action="store_true",
                       help="a sample of the dataset: do not enforce the card's counts, but require every "
                            "entry to be in the card's split")
    check.add_argument("--annotations", choices=("auto", "root", "card"), default="auto",
                       help="split files: <root>/anns/<split>.json if present (auto), only those (root), or "
                            "the card's shipped copy (card)")
    check.add_argument("--no-decode", action="store_true", help="only check that files exist (fast)")
    check.add_argument("--all", action="store_true", help="list every problem (default: the first 20 and a count)")

    prep = sub.add_parser("prepare", help="convert a download to the layout the card expects (idempotent)")
    prep.add_argument("name", choices=PREPARE_NAMES)
    prep.add_argument("--src", required=True, help="the unpacked download")
    prep.add_argument("--dst", required=True, help="the dataset folder to write (then pass it as --root)")

    syn = sub.add_parser("make-synthetic", help="write the deterministic synthetic mini datasets")
    syn.add_argument("--dst", required=True, help="parent folder; each dataset goes to <dst>/<name>")
    syn.add_argument("--name", action="append", help="only this dataset (repeatable; default: all)")
    syn.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from trainables.data.readers import DataError

    action = {"list": _list, "check": _check, "prepare": _prepare, "make-synthetic": _synthetic}[args.action]
    try:
        return action(args)
    except DataError as e:  # a bad file met outside `check`'s collection (e.g. during prepare)
        print(f"tunevlseg data {args.action}: error: {e}", file=sys.stderr)
        return 2


def _list(args) -> int:
    from trainables.data.cards import card_names, load_card

    rows = [("name", "display", "domain", "layout", "train/val/test", "classes")]
    for name in card_names():
        c = load_card(name)
        counts = "/".join(str(c.expected_count(s)) + ("*" if c.source_split(s) != s else "")
                          for s in ("train", "val", "test"))
        rows.append((c.name, c.display, c.domain, c.layout, counts, str(len(c.classes))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    print("* = the val split serves as test (no public test labels)")
    return 0


def _check(args) -> int:
    from trainables.data.check import check_dataset

    report = check_dataset(args.name, args.root, splits=tuple(args.split or ("train", "val", "test")),
                           subset=args.subset, annotations=args.annotations, decode=not args.no_decode,
                           stream=sys.stderr)
    print(report.render(limit=None if args.all else 20))
    return 0 if report.ok else 1


def _prepare(args) -> int:
    from trainables.data import prepare, prepare_medical

    counts = {**prepare.PREPARERS, **prepare_medical.PREPARERS}[args.name](args.src, args.dst)
    print(f"{args.name}: {counts} written under {Path(args.dst).expanduser()}")
    print(f"next: tunevlseg data check {args.name} --root {args.dst}")
    return 0


def _synthetic(args) -> int:
    from trainables.data.synthetic import SPECS, make_synthetic

    for name in args.name or list(SPECS):
        if name not in SPECS:
            raise SystemExit(f"tunevlseg data make-synthetic: unknown dataset {name!r}; allowed: {', '.join(SPECS)}")
        root = make_synthetic(name, Path(args.dst) / name, seed=args.seed)
        print(f"{name}: {root}")
    return 0
