"""A Markdown report per run: provenance from the Parquet columns, then the tables and the figures.

The report holds nothing that is not derived from the trial rows and the command line (no clock, no host
name), so regenerating it from the same Parquet gives the same file byte for byte.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from benchmark.results import tables as T


def _unique(values: Iterable[Any]) -> list[str]:
    out: list[str] = []
    for v in values:
        if v is None or (isinstance(v, float) and pd.isna(v)):
            continue
        s = _versions_text(v) if isinstance(v, (dict, list)) else str(v)
        if s and s not in out:
            out.append(s)
    return out


def _versions_text(v: Any) -> str:
    """`versions` may be a dict (struct column), a JSON string or plain text; show `name version, ...`."""
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return v
    if isinstance(v, dict):
        return ", ".join(f"{k} {val}" for k, val in sorted(v.items()) if val is not None)
    if isinstance(v, list):  # list of (key, value) pairs, as pyarrow returns a map column
        return ", ".join(f"{k} {val}" for k, val in sorted(v))
    return str(v)


def _time_span(trials: pd.DataFrame) -> str:
    def parse(col: str) -> pd.Series:
        s = trials[col]
        if pd.api.types.is_datetime64_any_dtype(s):
            return s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")
        if pd.api.types.is_numeric_dtype(s):
            return pd.to_datetime(s, unit="s", utc=True, errors="coerce")
        return pd.to_datetime(s, utc=True, errors="coerce", format="ISO8601")

    if "started_at" not in trials or "finished_at" not in trials:
        return "–"
    start, end = parse("started_at").min(), parse("finished_at").max()
    if pd.isna(start) or pd.isna(end):
        return "–"
    return f"{start:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M} UTC"


def provenance(trials: pd.DataFrame) -> list[tuple[str, str]]:
    """(field, value) pairs describing where the numbers come from."""
    from benchmark.results.seeds import reseed_rows

    status = trials["status"].value_counts()
    status_text = ", ".join(f"{k} {v}" for k, v in status.items())
    n_reseed = len(reseed_rows(trials))
    if n_reseed:
        status_text += f"; {n_reseed} of them reruns of a selected configuration with a further seed"
    rows = [("trials", f"{len(trials)} ({status_text})" if len(trials) else "0"),
            ("cells", str(trials.groupby(["vlsm", "learner", "dataset", "variant"]).ngroups if len(trials) else 0))]
    if "spec" in trials:
        rows.insert(0, ("spec", ", ".join(_unique(trials["spec"])) or "–"))
    for col, label in (("variant", "variants"), ("dataset", "datasets")):
        rows.append((label, ", ".join(sorted(_unique(trials[col]))) or "–"))
    if "git_sha" in trials:
        shas = trials["git_sha"].astype("string").fillna("?").value_counts()
        text = ", ".join(f"`{str(k)[:12]}` ({v} trials)" for k, v in shas.items()) if len(shas) > 1 else \
            (f"`{shas.index[0]}`" if len(shas) else "–")
        if "git_dirty" in trials and trials["git_dirty"].fillna(False).astype(bool).any():
            n = int(trials["git_dirty"].fillna(False).astype(bool).sum())
            text += f"; **uncommitted changes** in the tree for {n} trial(s)"
        rows.append(("git commit", text))
    if "versions" in trials:
        versions = trials["versions"].map(_versions_text, na_action="ignore")
        rows.append(("versions", " / ".join(_unique(versions)) or "–"))
    if "gpu_name" in trials:
        rows.append(("devices", ", ".join(_unique(trials["gpu_name"])) or "–"))
    rows.append(("trial times", _time_span(trials)))
    if "seconds" in trials:
        secs = pd.to_numeric(trials["seconds"], errors="coerce").sum()
        rows.append(("trial compute", f"{secs / 3600:.2f} h summed over trials"))
    if "error" in trials:
        errs = trials.loc[trials["status"] != "ok", "error"].dropna().astype(str)
        errs = errs[errs != ""]
        if len(errs):
            top = errs.str.split("\n").str[0].str.slice(0, 120).value_counts().head(3)
            rows.append(("most common errors", "; ".join(f"{k} (×{v})" for k, v in top.items())))
    return rows


def build_report(trials: pd.DataFrame, *, source: str, command: str, tables: dict[int, T.Table],
                 table2: T.Table2 | None = None, comparisons: dict[int, T.Comparison] | None = None,
                 figures: Iterable[Path] = (), out_dir: Path | None = None, skipped: Iterable[str] = (),
                 seed_tables: dict | None = None, ranking: Iterable[str] = (), findings: Iterable[str] = (),
                 sections: Iterable[str] = ()) -> str:
    """`seed_tables`: {table number: benchmark.results.seeds.SeedTable}; `ranking`: the lines of
    benchmark.results.ranking.section; `findings`: bullet lines generated from the tests
    (ranking.findings, ...), shown first; `sections`: further Markdown lines after the ranking (budget
    curves, efficiency, importance)."""
    from benchmark.results import seeds as SD
    from benchmark.results.selection import search_only

    comparisons = comparisons or {}
    seed_tables = seed_tables or {}
    spec = ", ".join(_unique(trials["spec"])) if "spec" in trials else ""
    out = [f"# TuneVLSeg results{f': {spec}' if spec else ''}", "",
           f"Generated from `{source}` by", "", "```", command, "```", "",
           "Every number below is computed from that Parquet file alone; rerunning the command regenerates this "
           "report, the tables and the figures.", "", "## Provenance", "", "| | |", "|:---|:---|"]
    out += [f"| {k} | {v.replace('|', '/')} |" for k, v in provenance(trials)]
    out.append("")
    if skipped:
        out += ["Not produced: " + "; ".join(skipped) + ".", ""]
    findings = list(findings)
    if findings:
        out += ["## Findings", "",
                "Generated from the tests and intervals further down (α = 0.05); nothing here is stronger than "
                "they are. Differences not listed as significant are not shown to exist.", "", *findings, ""]
    if table2 is not None:
        out += ["## Search space", "", T.render(table2, "md")]
    for number in sorted(tables):
        table = tables[number]
        out += [f"## Table {number}", "", T.render(table, "md"), T.render(table, "md", counts=True)]
        if number in seed_tables:
            out += [SD.render(seed_tables[number], "md")]
        if number in comparisons:
            out += [T.render(comparisons[number], "md")]
    out += list(ranking)
    out += list(sections)
    spread = spread_table(search_only(trials))
    if len(spread):
        out += ["## Spread over trials", "",
                "Test Dice (%) of every finished trial of a cell: how far a cell's number could move with "
                "another draw of the search. Differences between learners smaller than this are noise.", "",
                _markdown(spread), ""]
    figures = list(figures)
    if figures:
        out += ["## Figures", ""]
        for f in figures:
            rel = os.path.relpath(f, out_dir) if out_dir is not None else str(f)
            caption = f.stem.replace("_", " ")
            out += [f"![{caption}]({rel})", ""]
    return "\n".join(out).rstrip() + "\n"


def _markdown(df: pd.DataFrame) -> str:
    cells = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |",
             "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(df[c]) else ":---" for c in df.columns) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def spread_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per cell: number of ok trials and test Dice mean / std (population) / min / max, in percent."""
    ok = trials[(trials["status"] == "ok") & trials["test_dice"].notna()]
    if ok.empty:
        return pd.DataFrame()
    g = ok.groupby(["vlsm", "learner", "dataset", "variant"], sort=True)["test_dice"]
    out = pd.DataFrame({"trials": g.size(), "mean": g.mean() * 100, "std": g.std(ddof=0) * 100,
                        "min": g.min() * 100, "max": g.max() * 100}).reset_index()
    out["vlsm"] = out["vlsm"].map(T.vlsm_name)
    out["learner"] = out["learner"].map(T.learner_name)
    return out


def write_report(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
