"""`tunevlseg embeddings`: the paper's Fig. 4 (t-SNE of a VLSM's text and image embeddings per dataset)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "embeddings"
HELP = "t-SNE of a VLSM's own text embeddings of each prompt and image embeddings of each image (paper Fig. 4)"
DESCRIPTION = (
    "Embed every distinct prompt and every image of the given datasets with the VLSM's frozen, un-prompted "
    "encoders, reduce each kind to 2-D with t-SNE, and write embeddings_phrases.png, embeddings_images.png "
    "(coloured by dataset), embeddings.csv (dataset, kind, x, y, split, item, ...) and embeddings_summary.md "
    "into --out. Datasets come from --spec (its datasets, data roots and the VLSM's weights) or from "
    "--datasets with --data / --root.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", help="take datasets, data roots and VLSM weights from this experiment spec")
    p.add_argument("--datasets", nargs="+", metavar="CARD", help="data cards to embed (default: the spec's datasets)")
    p.add_argument("--data", metavar="DIR", help="dataset root: dataset NAME lives in DIR/NAME")
    p.add_argument("--root", action="append", default=[], metavar="NAME=DIR", help="root of one dataset; repeatable")
    p.add_argument("--vlsm", default="clipseg", help="VLSM whose encoders embed (default clipseg, as the paper)")
    p.add_argument("--weights", metavar="ID|DIR", help="VLSM weights (default: the spec's; else random init, labelled)")
    p.add_argument("--config", metavar="NAME", help="shipped VLSM config for random init (no weights)")
    p.add_argument("--splits", nargs="+", default=["train", "val", "test"], help="splits to embed (default all)")
    p.add_argument("--max-images", type=int, metavar="N", help="at most N images per dataset (fixed-seed draw)")
    p.add_argument("--reference", metavar="mini-corpus|FILE",
                   help="reference set: mini-corpus (the mini VLSMs' pretraining samples: phrases and images) "
                        "or a text file of phrases, one a line (e.g. PhraseCut's)")
    p.add_argument("--reference-size", type=int, default=200, metavar="N",
                   help="samples drawn from mini-corpus (default 200)")
    p.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (capped at (n-1)/3; default 30)")
    p.add_argument("--seed", type=int, default=0, help="t-SNE seed (default 0)")
    p.add_argument("--device", default="auto", help="torch device (default auto: cuda when available, else cpu)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the figures and tables")


def _roots(args: argparse.Namespace, spec) -> dict[str, str]:
    from trainables.config import ConfigError
    from trainables.data.cards import card_names
    from trainables.registry import spelling

    def canonical(name: str) -> str:  # one spelling of every name: `mini-polyp` (as in cell ids) is `mini_polyp`
        return name if name.endswith((".yaml", ".yml")) or "/" in name else spelling(name, card_names())

    names = [canonical(n) for n in (args.datasets or (spec.axes.dataset if spec is not None else []))]
    if not names:
        raise ConfigError("no datasets: give --datasets CARD ... or --spec SPEC")
    explicit = {}
    for item in args.root:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--root {item!r}: expected NAME=DIR")
        explicit[canonical(name)] = path
    roots = {}
    for name in names:
        root = explicit.get(name) or (str(Path(args.data) / name) if args.data else None) or \
            (spec.data.root_for(name) if spec is not None else None)
        if root is None:
            raise ConfigError(f"no data root for dataset {name!r}: pass --data DIR (datasets live in DIR/<dataset>) "
                              f"or --root {name}=DIR")
        roots[name] = root
    return roots


def run(args: argparse.Namespace) -> int:
    from trainables.config import ConfigError

    spec = None
    if args.spec:
        from benchmark.plan.spec import load_spec

        spec = load_spec(args.spec)
    if args.max_images is not None and args.max_images < 1:
        raise ConfigError("--max-images must be at least 1")
    roots = _roots(args, spec)
    if args.reference and args.reference != "mini-corpus" and not Path(args.reference).is_file():
        # checked before any model loads or image is embedded
        raise FileNotFoundError(f"{args.reference}: no such phrase file (one phrase per line, e.g. PhraseCut's "
                                "phrases); or --reference mini-corpus")
    weights = args.weights
    if weights is None and spec is not None and args.vlsm in spec.vlsms:
        weights = spec.vlsms[args.vlsm].weights
    from benchmark.results import embeddings as B
    from trainables import embeddings as E

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    adapter = E.load_vlsm(args.vlsm, weights, args.config)
    emb = E.embed(adapter, roots, splits=args.splits, max_images=args.max_images, reference=args.reference,
                  reference_size=args.reference_size, device=device)
    shown = weights
    if weights and Path(weights).is_absolute() and Path(weights).resolve().is_relative_to(Path.cwd().resolve()):
        shown = str(Path(weights).resolve().relative_to(Path.cwd().resolve()))  # same text on every checkout
    model = f"{args.vlsm} ({shown})" if weights else f"{args.vlsm} (random init, no weights: not a real model)"
    reference = None
    if args.reference == E.MINI_CORPUS:
        reference = f"{E.MINI_CORPUS} (pretraining)"
    elif args.reference:
        reference = Path(args.reference).stem
    written = B.write(emb.rows, emb.vectors, args.out, model=model, reference=reference, seed=args.seed,
                      perplexity=args.perplexity)
    n_text = sum(r["kind"] == E.TEXT for r in emb.rows)
    print(f"tunevlseg embeddings: {n_text} phrases and {len(emb.rows) - n_text} images of {len(roots)} dataset(s)"
          f"{' + reference' if reference else ''}; wrote {len(written)} files to {args.out}", file=sys.stdout)
    _to_mlflow(Path(args.out))
    return 0


def _to_mlflow(out: Path) -> None:
    """`--out <run>/embeddings` (make benchmark): the files join the sweep's MLflow run, beside the tables.
    Anywhere else, or a run without an MLflow store, nothing is logged; a failing store costs a warning."""
    from benchmark.mlflow_mirror.report import EMBEDDINGS_DIR, log_outputs
    from benchmark.results.run_dir import RunDir

    if out.name != EMBEDDINGS_DIR or not RunDir(out.parent).plan_file.is_file():
        return
    try:
        run_id = log_outputs(out.parent, [], None)
    except Exception as e:  # noqa: BLE001
        print(f"tunevlseg embeddings: warning: not logged to MLflow: {type(e).__name__}: {e}", file=sys.stderr)
        return
    if run_id:
        print(f"tunevlseg embeddings: logged to the sweep's MLflow run {run_id}")
