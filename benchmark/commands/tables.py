"""`tunevlseg tables RUN`: the paper's Tables 2–5, its figures and a report, from a run's Parquet alone.

Never imports torch or Ray: the tables must regenerate on any laptop that has the Parquet file.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

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


@dataclass
class Tabulated:
    """What one `tunevlseg tables` call tabulates from a run: every table, and what it skipped (and why).
    Typed loosely: the results modules are imported only when the command runs, not for `--help`."""

    trials: Any  # the run's trial rows, checked (pandas DataFrame)
    spec_rule: Any  # the spec's `select` rule (benchmark.plan.spec.Selection)
    table2: Any  # None when the search space could not be read
    tables: dict[int, Any]  # {3: Table, 4: ..., 5: ...}: those the run has trials for
    seed_tables: dict[int, Any] = field(default_factory=dict)
    comparisons: dict[int, Any] = field(default_factory=dict)  # with --vs-paper
    skipped: list[str] = field(default_factory=list)


REPORT = "report.md"


def table_files(t: Tabulated, fmt: str) -> Iterator[tuple[str, str, bool]]:
    """The output layout: every table of one format as (file name, text, written), in print order. `written`
    is False for a comparison with nothing comparable: printed as its one line, but no file (an earlier run's
    file of that name would contradict the report, so --out removes it)."""
    from benchmark.results import seeds as SD
    from benchmark.results import tables as T

    yield f"table2.{fmt}", T.render(t.table2, fmt), True
    for n, table in t.tables.items():
        yield f"table{n}.{fmt}", T.render(table, fmt), True
        yield f"table{n}_trials.{fmt}", T.render(table, fmt, counts=True), True
        if n in t.seed_tables:
            yield f"table{n}_seeds.{fmt}", SD.render(t.seed_tables[n], fmt), True
        if n in t.comparisons:
            cmp = t.comparisons[n]
            yield f"table{n}_vs_paper.{fmt}", T.render(cmp, fmt), not cmp.not_comparable


def tabulate(args: argparse.Namespace) -> Tabulated:
    """Read the run's trials and build Table 2, Tables 3-5, their seed tables and (--vs-paper) comparisons."""
    from pathlib import Path

    from benchmark.plan.spec import Selection
    from benchmark.results import seeds as SD
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
    seed_tables = {n: st for n, t in tables.items() if (st := SD.seed_table(t, trials)) is not None}
    comparisons = {n: T.compare(t) for n, t in tables.items()} if args.vs_paper else {}
    for n, c in comparisons.items():
        if c.not_comparable:
            skipped.append(f"Table {n} vs paper (no dataset in common with the paper's ten)")
    return Tabulated(trials, spec_rule, table2, tables, seed_tables, comparisons, skipped)


def run(args: argparse.Namespace) -> int:
    t = tabulate(args)
    if not args.out:
        fmt = "md" if args.format == "all" else args.format
        sys.stdout.write("\n".join(text for _, text, _ in table_files(t, fmt)))
        _say_skipped(t)
        return 0
    from pathlib import Path

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = write_tables(t, out, args.format)
    written += write_report(t, args, out)
    _say_skipped(t)
    print(f"tunevlseg tables: wrote {len(written)} files to {out} (report: {out / REPORT})")
    if Path(args.run).is_dir() and not args.no_mlflow:
        _to_mlflow(args, written, out)
    return 0


def write_tables(t: Tabulated, out, format_: str) -> list:
    """Every table file of the layout into `out`, in md, csv and tex for "all"; returns the paths written."""
    from benchmark.results import tables as T

    written = []
    for fmt in list(T.FORMATS) if format_ == "all" else [format_]:
        for name, text, keep in table_files(t, fmt):
            path = out / name
            if keep:
                path.write_text(text, encoding="utf-8")
                written.append(path)
            elif path.is_file():
                path.unlink()  # an earlier run's comparison would now contradict the report
    return written


def write_report(t: Tabulated, args: argparse.Namespace, out) -> list:
    """The figures, the ranking, budget, efficiency and importance sections, the findings and report.md;
    returns the paths written (report.md last)."""
    from benchmark.results import budget, efficiency, importance, ranking, report
    from benchmark.results import selection as sel

    written = []
    draw = not args.no_figures
    figures = []
    if draw:
        from benchmark.results import figures as F

        # the search's trials only: a rerun with another seed is no further point of the search
        figures = F.write_figures(sel.search_only(t.trials), out, t.tables[3])
        written += figures
    rk = ranking.section(t.tables[3], t.seed_tables.get(3), out if draw else None)
    written += rk.figures
    rule = sel.rule_for(args.selection, t.spec_rule)
    budget_lines, files, budget_summary = budget.write(t.trials, rule, out, draw)
    written += files
    cost_lines, files = efficiency.write(t.trials, rule, out, draw, args.price_per_hour)
    written += files
    imp_lines, files, imp = importance.write(t.trials, t.spec_rule, out, args.run, draw)
    written += files
    found = ranking.findings(rk, 3) + ranking.ablation_findings(t.tables) + budget.findings(budget_summary) \
        + importance.findings(imp)
    text = report.build_report(t.trials, source=args.run, command=_command_line(args), tables=t.tables,
                               table2=t.table2, comparisons=t.comparisons, figures=figures, out_dir=out,
                               skipped=t.skipped, seed_tables=t.seed_tables, ranking=rk.lines,
                               findings=found, sections=budget_lines + cost_lines + imp_lines)
    written.append(report.write_report(out / REPORT, text))
    return written


def _say_skipped(t: Tabulated) -> None:
    for s in t.skipped:
        print(f"tunevlseg tables: skipped {s}", file=sys.stderr)


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
