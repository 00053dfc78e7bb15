"""`tunevlseg tables RUN`: the paper's Tables 2–5, its figures and a report, from a run's Parquet alone.

Never imports torch or Ray: the tables must regenerate on any laptop that has the Parquet file.
"""

from __future__ import annotations

import argparse
import shlex
import sys

NAME = "tables"
HELP = "regenerate the paper's Tables 2-5, figures and a report from a run's trial Parquet files"
DESCRIPTION = (
    "Build Tables 2-5 of the paper (search space; Dice per VLSM x learner x dataset; MaPLe init ablation; "
    "no-upsampler ablation) from RUN/trials/*.parquet, selecting each cell's trial by the spec's `select` "
    "rule the run was swept with. Without --out the tables are printed; with --out they are written as files "
    "together with the figures (PNG) and report.md.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory written by `tunevlseg run` (RUN/trials/*.parquet), "
                                             "or one trial Parquet file")
    p.add_argument("--format", choices=["md", "csv", "tex", "all"], default="md",
                   help="table format (default md); 'all' writes md, csv and tex (with --out)")
    p.add_argument("--out", metavar="DIR", help="write tables, figures and report.md into DIR instead of printing")
    p.add_argument("--vs-paper", action="store_true",
                   help="also show each table beside the paper's numbers (results/paper/) with the difference")
    p.add_argument("--selection", choices=["val", "best_test"], default="val",
                   help="val: the spec's `select` rule, as in selected.parquet (default: lowest validation "
                        "objective) -> its test Dice; best_test: best test Dice of the trials (the paper's "
                        "apparent rule)")
    p.add_argument("--spec", help="when the Parquet holds several specs, the one to tabulate")
    p.add_argument("--space", default=None,
                   help="search space for Table 2: paper or reference (what the original code searched); "
                        "default: the domains the run searched, from RUN/plan.json (else the paper's)")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures (with --out)")
    p.add_argument("--mlflow", metavar="URI", help="with --out: log the files to the sweep's MLflow run in this "
                   "tracking store (default: RUN/mlflow.db when the sweep used it)")
    p.add_argument("--no-mlflow", action="store_true", help="with --out: do not log the files to MLflow")
    p.add_argument("--price-per-hour", type=_price, metavar="PRICE",
                   help="with --out: also show the tuning compute of efficiency.csv as money, at PRICE per "
                        "device-hour (GPU-hour where a GPU ran, else CPU-hour; any currency)")


def _price(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"--price-per-hour: expected a number >= 0 (a price per device-hour), "
                                         f"got {text!r}")
    return value


def _command_line(args: argparse.Namespace) -> str:
    parts = ["tunevlseg", "tables", args.run]
    if args.format != "md":
        parts += ["--format", args.format]
    if args.out:
        parts += ["--out", args.out]
    if args.vs_paper:
        parts.append("--vs-paper")
    if args.selection != "val":
        parts += ["--selection", args.selection]
    if args.spec:
        parts += ["--spec", args.spec]
    if args.space:
        parts += ["--space", args.space]
    if args.no_figures:
        parts.append("--no-figures")
    if args.price_per_hour is not None:
        parts += ["--price-per-hour", f"{args.price_per_hour:g}"]
    return shlex.join(parts)


def _table2(T, args: argparse.Namespace):
    """Table 2 as this run searched it (RUN/plan.json), marked where it differs from the paper's; with
    --space, that named space instead; with neither, the paper's space with a sentence saying so."""
    if args.space:
        return T.table2(space=args.space, mark_vs_paper=True,
                        source=f"The `{args.space}` search space as defined (--space); not read from the run.")
    searched = T.searched_space(args.run)
    if searched is not None:
        return T.table2(searched, mark_vs_paper=True,
                        source="The domains this run searched (bounds applied), from its plan.json.")
    return T.table2(space="paper", source=(
        "The paper's search space. This run does not record what it searched (no plan.json with a `space` "
        "record: a Parquet file, or a run from an older version; rerunning its spec on the finished run adds "
        "the record), so narrower `search.bounds` would not show here."))


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from benchmark.plan.spec import Selection
    from benchmark.results import selection as sel
    from benchmark.results import tables as T
    from benchmark.results.run_dir import RunDir

    spec_rule = RunDir(args.run).selection() if Path(args.run).is_dir() else Selection()
    trials = T.read_trials(args.run, spec=args.spec, by=sel.rule_for(args.selection, spec_rule).by)
    skipped: list[str] = []
    try:
        table2 = _table2(T, args)
    except ImportError as e:  # the search-space module is optional for reading results
        table2 = None
        skipped.append(f"Table 2 ({e})")
    tables = {3: T.table3(trials, args.selection, spec_rule)}
    for n in (4, 5):
        if T.has_trials(trials, n):
            tables[n] = T.TABLE_BUILDERS[n](trials, args.selection, spec_rule)
        else:
            skipped.append(f"Table {n} (no trials with variant {T.VARIANTS[n]!r})")
    other = sorted(set(trials["variant"]) - set(T.VARIANTS.values()))
    if other:
        skipped.append(f"trials of variant(s) {', '.join(other)} (no paper table for them)")
    from benchmark.results import seeds as SD

    seed_tables = {n: st for n, t in tables.items() if (st := SD.seed_table(t, trials)) is not None}
    comparisons = {n: T.compare(t) for n, t in tables.items()} if args.vs_paper else {}
    for n, c in comparisons.items():
        if c.not_comparable:
            skipped.append(f"Table {n} vs paper (no dataset in common with the paper's ten)")

    if not args.out:
        fmt = "md" if args.format == "all" else args.format
        blocks = [T.render(table2, fmt)]
        for n, t in tables.items():
            blocks += [T.render(t, fmt), T.render(t, fmt, counts=True)]
            if n in seed_tables:
                blocks.append(SD.render(seed_tables[n], fmt))
            if n in comparisons:
                blocks.append(T.render(comparisons[n], fmt))
        sys.stdout.write("\n".join(blocks))
        for s in skipped:
            print(f"tunevlseg tables: skipped {s}", file=sys.stderr)
        return 0

    from benchmark.results import report

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    formats = list(T.FORMATS) if args.format == "all" else [args.format]

    def write(name: str, text: str) -> None:
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)

    for fmt in formats:
        write(f"table2.{fmt}", T.render(table2, fmt))
        for n, t in tables.items():
            write(f"table{n}.{fmt}", T.render(t, fmt))
            write(f"table{n}_trials.{fmt}", T.render(t, fmt, counts=True))
            if n in seed_tables:
                write(f"table{n}_seeds.{fmt}", SD.render(seed_tables[n], fmt))
            vs_paper = out / f"table{n}_vs_paper.{fmt}"
            if n in comparisons and not comparisons[n].not_comparable:
                write(vs_paper.name, T.render(comparisons[n], fmt))
            elif n in comparisons and vs_paper.is_file():
                vs_paper.unlink()  # an earlier run's comparison would now contradict the report
    figures = []
    if not args.no_figures:
        from benchmark.results import figures as F

        # the search's trials only: a rerun with another seed is no further point of the search
        figures = F.write_figures(sel.search_only(trials), out, tables[3])
        written += figures
    from benchmark.results import budget, efficiency, importance, ranking

    rk = ranking.section(tables[3], seed_tables.get(3), None if args.no_figures else out)
    written += rk.figures
    rule = sel.rule_for(args.selection, spec_rule)
    draw = not args.no_figures
    budget_lines, files, budget_summary = budget.write(trials, rule, out, draw)
    written += files
    cost_lines, files = efficiency.write(trials, rule, out, draw, args.price_per_hour)
    written += files
    imp_lines, files, imp = importance.write(trials, spec_rule, out, args.run, draw)
    written += files
    found = ranking.findings(rk, 3) + ranking.ablation_findings(tables) + budget.findings(budget_summary) \
        + importance.findings(imp)
    text = report.build_report(trials, source=args.run, command=_command_line(args), tables=tables,
                               table2=table2, comparisons=comparisons, figures=figures, out_dir=out,
                               skipped=skipped, seed_tables=seed_tables, ranking=rk.lines,
                               findings=found, sections=budget_lines + cost_lines + imp_lines)
    written.append(report.write_report(out / "report.md", text))
    for s in skipped:
        print(f"tunevlseg tables: skipped {s}", file=sys.stderr)
    print(f"tunevlseg tables: wrote {len(written)} files to {out} (report: {out / 'report.md'})")
    if Path(args.run).is_dir() and not args.no_mlflow:
        _to_mlflow(args, written, out)
    return 0


def _to_mlflow(args: argparse.Namespace, written, out) -> None:
    """The sweep-level MLflow run; a tracking store that fails costs a warning, never the tables."""
    import logging

    from benchmark.mlflow_mirror.report import log_outputs

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        run_id = log_outputs(args.run, written, out, uri=args.mlflow)
    except Exception as e:  # noqa: BLE001
        print(f"tunevlseg tables: warning: not logged to MLflow: {type(e).__name__}: {e}", file=sys.stderr)
        return
    if run_id:
        print(f"tunevlseg tables: logged to the sweep's MLflow run {run_id}")
