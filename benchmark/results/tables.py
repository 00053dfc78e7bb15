"""The paper's Tables 2–5 as pure functions of the trial Parquet, with Markdown / CSV / LaTeX renderers.

Everything here is pandas on one-row-per-trial frames (the `records.TRIAL_SCHEMA` of `<run>/trials/*.parquet`):
no torch, no Ray, so tables regenerate on a laptop from the Parquet alone.

Conventions, all taken from the paper and checked against its numbers (tests/test_tables.py):
- Dice in percent, two decimals, rounded half-up. The paper's CoCoOp and CoOp means (65.33, 62.91) are
  exact halves of their cells (65.325, 62.905): half-up reproduces them, Python's float rounding does not.
- "Mean ± Std" of a row: over its datasets, population std (ddof=0; ddof=1 gives 12.86 for MaPLe, not 12.20).
- "Average across Methods": mean ± population std of the prompt-tuning rows' means (E2E rows excluded);
  this gives 73.10 ± 6.24 (Table 3) and 70.51 ± 5.40 (Table 5) from the paper's own cells.
- Row and column order as printed in the paper; display names mapped once, here.
- A cell that has no selected trial shows "–"; every table carries per-cell trial counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from benchmark.results import selection as sel
from benchmark.plan import search_space
from benchmark.plan.spec import Selection
from benchmark.results.records import SCHEMA_VERSION
from benchmark.results.run_dir import RunDir
from trainables.catalog import LEARNERS, VLSMS, learner_display, prompt_learners, vlsm_display
from trainables import resources
from trainables.config import ConfigError

# ---------------------------------------------------------------------------------------------------------
# Names and layout (paper Tables 1 and 3)


@dataclass(frozen=True)
class Dataset:
    key: str
    display: str
    group: str


DATASETS = (
    Dataset("bkai", "BKAI", "Non-Radiology"),
    Dataset("clinicdb", "ClinicDB", "Non-Radiology"),
    Dataset("kvasir", "Kvasir", "Non-Radiology"),
    Dataset("dfu", "DFU", "Non-Radiology"),
    Dataset("isic", "ISIC", "Non-Radiology"),
    Dataset("busi", "BUSI", "Radiology"),
    Dataset("camus", "CAMUS", "Radiology"),
    Dataset("chexlocalize", "CheXlocalize", "Radiology"),
    Dataset("cityscapes", "Cityscapes", "Open Domain"),
    Dataset("voc", "PascalVOC", "Open Domain"),
)
PAPER_KEYS = frozenset(d.key for d in DATASETS)
OTHER_GROUP = "Other"  # datasets a spec adds beyond the paper's ten (e.g. a mini data set)

# Paper Table 3 row order: E2E baselines first, then CLIPSeg's six learners, then CRIS's two.
TABLE3_ROWS = (
    ("cris", "e2e"), ("clipseg", "e2e"),
    ("clipseg", "maple"), ("clipseg", "shared_separate"), ("clipseg", "shared_attention"), ("clipseg", "vpt"),
    ("clipseg", "cocoop"), ("clipseg", "coop"),
    ("cris", "cocoop"), ("cris", "coop"),
)
TABLE5_ROWS = TABLE3_ROWS[2:]  # no E2E: the ablation removes the upsampler of the prompt-tuned models

VARIANTS = {3: "default", 4: "gaussian_init", 5: "no_upsampler"}
INIT_LABELS = {"gaussian_init": "Gaussian", "default": "a photo of a"}

TITLES = {
    2: "The search space for the hyperparameter search.",
    3: "Test Dice (%) for each viable combination of VLSM and context learner, and end-to-end (E2E) "
       "finetuning, for all datasets.",
    4: "Test Dice (%) of Maple when the first context vectors are initialised from a Gaussian "
       "distribution vs 'a photo of a'.",
    5: "Test Dice (%) for each viable combination of VLSM and context learner when no new learnable "
       "last upsampling layer is introduced.",
}

# Where the paper's E2E rows come from (docs/learners.md): printed under every table with E2E rows.
E2E_SOURCE_NOTE = ("E2E rows: the paper's medical E2E numbers are Poudel et al.'s (medvlsm) CLIPSeg fine-tuned "
                   "with medvlsm's recipe, most likely its main line's (experiments/medvlsm_e2e_main.yaml; "
                   "experiments/medvlsm_e2e.yaml follows later side branches); only Cityscapes and VOC used the "
                   "original TuneVLSeg's E2E scripts (experiments/table3.yaml, reference.yaml).")

# The paper prints these in the text under Tables 3 and 5; its CSVs have no row for them.
PAPER_AVERAGE = {3: (73.10, 6.24), 5: (70.51, 5.40)}
PAPER_DIR = resources.path("paper")

REQUIRED_COLUMNS = ("vlsm", "learner", "dataset", "variant", "status", "test_dice")
DASH = "–"


class SchemaError(ConfigError):
    """The Parquet file is not a trial table this version can read."""


def vlsm_name(key: str) -> str:
    """The display name of the VLSM's catalog entry (the key itself for a name the catalog does not know)."""
    return vlsm_display(key)


def learner_name(key: str) -> str:
    return learner_display(key)


def _in_average(learner: str) -> bool:
    """Prompt learners count towards "Average across Methods"; a learner that prompts nothing (E2E) does not,
    nor does one beyond the paper (LoRA, VLSM-Adapter), so that the average stays the paper's."""
    return learner not in LEARNERS or (LEARNERS.get(learner).prompted and not _beyond_paper(learner))


def _beyond_paper(learner: str) -> bool:
    return learner in LEARNERS and LEARNERS.get(learner).beyond_paper


# Marks a learner the paper did not evaluate (catalog `beyond_paper`): its Table 3/5 rows and Table 2 entries.
BEYOND_MARK = "‡"
BEYOND_NOTE = (f"{BEYOND_MARK} beyond the paper: a learner the paper did not evaluate (docs/learners.md, "
               "\"Beyond the paper\"); listed after the paper's rows and not in the Average across Methods.")


def _row_label(learner: str) -> str:
    return learner_name(learner) + (f" {BEYOND_MARK}" if _beyond_paper(learner) else "")


# ---------------------------------------------------------------------------------------------------------
# Reading and checking trial rows


def supported_schema_versions() -> set[int]:
    """The schema versions this reader understands: the writer's current one (`benchmark.results.records`)."""
    return {int(SCHEMA_VERSION)}


def _check_version(found: set, source: str) -> None:
    unknown = {int(v) for v in found} - supported_schema_versions()
    if unknown:
        raise SchemaError(
            f"{source}: written with schema_version {sorted(unknown)}, this tunevlseg reads "
            f"{sorted(supported_schema_versions())}; regenerate the tables with the tunevlseg version that "
            "wrote the run, or re-export its Parquet with this one")


def check_trials(df: pd.DataFrame, source: str = "trials", by: str = "objective") -> pd.DataFrame:
    """Validate a trial frame and return a cleaned copy (numeric metrics, string keys, no duplicate trials);
    `by` is the column the selection rule ranks trials by."""
    needed = list(dict.fromkeys(list(REQUIRED_COLUMNS) + [by]))
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise SchemaError(
            f"{source}: not a tunevlseg trial table: missing column(s) {', '.join(missing)} "
            f"(has: {', '.join(map(str, df.columns[:12]))}{', ...' if len(df.columns) > 12 else ''}); "
            "pass the run directory written by `tunevlseg run` (its trials/*.parquet)")
    if "schema_version" in df.columns:
        _check_version(set(pd.to_numeric(df["schema_version"], errors="coerce").dropna().unique()), source)
    df = df.copy()
    for col in ("vlsm", "learner", "dataset", "variant", "status"):
        df[col] = df[col].astype("string").fillna("").astype(object)
    for col in list(dict.fromkeys(["test_dice", "objective", by])) + [c for c in df.columns if c.startswith("hp_")]:
        if col in df.columns and not pd.api.types.is_bool_dtype(df[col]):
            converted = pd.to_numeric(df[col], errors="coerce")
            # keep categorical hyperparameters (e.g. a string choice) as they are
            if col in ("test_dice", "objective", by) or converted.notna().sum() == df[col].notna().sum():
                df[col] = converted.astype(float)
    # A resumed run may append a trial twice; the last write wins.
    if "trial_id" in df.columns and df["trial_id"].notna().any():
        df = df.drop_duplicates(subset=list(sel.CELL_KEYS) + ["trial_id"], keep="last")
    return df.reset_index(drop=True)


def _read_parquet(f: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(f)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise SchemaError(f"{f}: cannot be read as Parquet ({type(e).__name__}: {e})") from None
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if meta.get("tunevlseg.schema") == "selected":
        raise SchemaError(f"{f}: this is the run's per-cell selection, not its trials; pass the run directory "
                          "(the tables select from all trials)")
    version = meta.get("tunevlseg.schema_version")
    if version is not None:
        if not version.strip().isdigit():
            raise SchemaError(f"{f}: unreadable schema_version {version!r} in the Parquet metadata")
        _check_version({int(version)}, str(f))
    return table.to_pandas()


def read_trials(path: str | Path, spec: str | None = None, by: str = "objective") -> pd.DataFrame:
    """Trial rows of a run directory (its trials/*.parquet) or of one Parquet file, checked."""
    path = Path(path)
    if path.is_dir():
        files = RunDir(path).trial_files()
        if not files:
            raise FileNotFoundError(f"{path}: no trials/*.parquet in this run directory; pass the run directory "
                                    "written by `tunevlseg run` or a trial Parquet file")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: no such run directory or Parquet file")
    frames = [_read_parquet(f) for f in files]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    source = str(path)
    if "spec" in df.columns:
        specs = sorted(df["spec"].dropna().astype(str).unique())
        from benchmark.sweep.smoke import rehearsal_specs

        if rehearsal_specs(specs):
            raise ConfigError(f"{source}: rows of a rehearsal ({', '.join(rehearsal_specs(specs))}, written by "
                              "`tunevlseg run --smoke`) are not results; tabulate a real run's directory")
        if spec is not None:
            if spec not in specs:
                raise ConfigError(f"{source}: no trials of spec {spec!r}; the file holds: {', '.join(specs)}")
            df = df[df["spec"].astype(str) == spec]
        elif len(specs) > 1:
            raise ConfigError(f"{source}: trials of several specs ({', '.join(specs)}) would be mixed in one "
                              "table; choose one with --spec NAME")
    return check_trials(df, source, by)


# ---------------------------------------------------------------------------------------------------------
# Number formatting


def fmt(x: Any, digits: int = 2) -> str:
    """Half-up rounding to `digits` decimals; "–" for missing. Rounds at 9 decimals first so that
    binary noise (65.32499999999) does not decide a half."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)) or pd.isna(x):
        return DASH
    d = Decimal(repr(round(float(x), 9))).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{d:.{digits}f}"


def fmt_signed(x: Any) -> str:
    s = fmt(x)
    if s in ("0.00", "-0.00"):
        return "0.00"
    return s if s == DASH or s.startswith("-") else "+" + s


def rounded(x: Any, digits: int = 2) -> float:
    """The value as printed (half-up), so a difference to the paper is between the numbers one reads."""
    s = fmt(x, digits)
    return math.nan if s == DASH else float(s)


# ---------------------------------------------------------------------------------------------------------
# Result tables 3–5


@dataclass(frozen=True)
class RowSpec:
    labels: tuple[str, ...]  # display labels, one per stub column
    vlsm: str
    learner: str
    variant: str
    in_average: bool  # prompt-tuning rows count towards "Average across Methods"; E2E does not


@dataclass
class Table:
    number: int
    title: str
    selection: str
    stub: tuple[str, ...]
    rows: list[RowSpec]
    datasets: list[Dataset]
    dice: pd.DataFrame  # percent; index = row position, columns = dataset keys; NaN = no selected trial
    n_trials: pd.DataFrame  # same shape: trials in the cell (any status)
    n_ok: pd.DataFrame  # same shape: finished trials
    mean: pd.Series  # over the row's datasets that have a value
    std: pd.Series  # population std over the same
    n_mean: pd.Series  # how many datasets the mean covers
    average: tuple[float, float, int] | None  # (mean, std, rows); None = the table has no such row
    chosen: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)  # the selected trial per cell
    rule: Selection = field(default_factory=Selection)  # the spec's `select` ("val")

    @property
    def header(self) -> str:
        return sel.header(self.selection, self.rule)

    def frame(self) -> pd.DataFrame:
        """The table as one labelled DataFrame: (group, dataset) columns, then Overall Mean / Std."""
        idx = pd.MultiIndex.from_tuples([r.labels for r in self.rows], names=list(self.stub))
        cols = pd.MultiIndex.from_tuples([(d.group, d.display) for d in self.datasets])
        out = pd.DataFrame(self.dice.to_numpy(), index=idx, columns=cols)
        out[("Overall", "Mean")] = self.mean.to_numpy()
        out[("Overall", "Std")] = self.std.to_numpy()
        return out


def _datasets_for(trials: pd.DataFrame) -> list[Dataset]:
    """The paper's ten columns (not-yet-run ones show "–") whenever the run has any paper dataset; a run
    on other datasets only (the embedded mini benchmark, a user's own data) shows just its own."""
    known = {d.key for d in DATASETS}
    present = set(trials["dataset"]) - {""}
    extra = sorted(present - known)
    paper = list(DATASETS) if present & known or not present else []
    return paper + [Dataset(k, k, OTHER_GROUP) for k in extra]


def _extra_pairs(trials: pd.DataFrame, known: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    known = set(known)
    pairs = {(v, l) for v, l in zip(trials["vlsm"], trials["learner"])} - known
    vlsms = VLSMS.names()
    # learners beyond the paper last, after every row the paper could have had
    return sorted(pairs, key=lambda p: (_beyond_paper(p[1]), vlsms.index(p[0]) if p[0] in vlsms else len(vlsms), p))


def _build(number: int, trials: pd.DataFrame, rows: list[RowSpec], stub: tuple[str, ...], selection: str,
           rule: Selection | None, with_average: bool) -> Table:
    datasets = _datasets_for(trials)
    rule = rule or Selection()
    chosen = sel.select(trials, sel.rule_for(selection, rule))
    cell = {tuple(k): r for k, r in zip(chosen[sel.CELL_KEYS].itertuples(index=False, name=None),
                                        chosen.to_dict("records"))}
    keys = [d.key for d in datasets]
    dice = pd.DataFrame(np.nan, index=range(len(rows)), columns=keys)
    n_trials = pd.DataFrame(0, index=range(len(rows)), columns=keys)
    n_ok = pd.DataFrame(0, index=range(len(rows)), columns=keys)
    for i, r in enumerate(rows):
        for d in keys:
            c = cell.get((r.vlsm, r.learner, d, r.variant))
            if c is None:
                continue
            dice.loc[i, d] = 100.0 * float(c["test_dice"])
            n_trials.loc[i, d] = int(c["n_trials"])
            n_ok.loc[i, d] = int(c["n_ok"])
    values = dice.to_numpy()
    n_mean = pd.Series(np.isfinite(values).sum(axis=1), dtype=int)
    with np.errstate(all="ignore"):
        mean = pd.Series([np.nanmean(v) if np.isfinite(v).any() else np.nan for v in values], dtype=float)
        std = pd.Series([np.nanstd(v, ddof=0) if np.isfinite(v).any() else np.nan for v in values], dtype=float)
    average = None
    if with_average:
        means = np.array([m for m, r in zip(mean, rows) if r.in_average and math.isfinite(m)])
        average = (float(means.mean()), float(means.std(ddof=0)), len(means)) if len(means) else \
            (math.nan, math.nan, 0)
    return Table(number, TITLES[number], selection, stub, rows, datasets, dice, n_trials, n_ok, mean, std,
                 n_mean, average, chosen, rule)


def table3(trials: pd.DataFrame, selection: str = "val", rule: Selection | None = None) -> Table:
    """Paper Table 3: every (VLSM, learner) row of the paper, in its order, plus any other pair the run has."""
    t = trials[trials["variant"] == VARIANTS[3]]
    pairs = list(TABLE3_ROWS) + _extra_pairs(t, TABLE3_ROWS)
    rows = [RowSpec((vlsm_name(v), _row_label(l)), v, l, VARIANTS[3], _in_average(l)) for v, l in pairs]
    return _build(3, t, rows, ("Model", "Context Learner"), selection, rule, with_average=True)


def table4(trials: pd.DataFrame, selection: str = "val", rule: Selection | None = None) -> Table:
    """Paper Table 4: MaPLe (and any other learner run with `gaussian_init`), Gaussian vs 'a photo of a'."""
    t = trials[trials["variant"].isin(["gaussian_init", "default"])]
    pairs = [("clipseg", "maple")] + _extra_pairs(t[t["variant"] == "gaussian_init"], [("clipseg", "maple")])
    rows = [RowSpec((vlsm_name(v), learner_name(l), INIT_LABELS[var]), v, l, var, True)
            for v, l in pairs for var in ("gaussian_init", "default")]
    # Columns beyond the paper's ten only for datasets the ablation itself ran.
    ablated = set(t.loc[t["variant"] == "gaussian_init", "dataset"])
    t = t[t["dataset"].isin(ablated | {d.key for d in DATASETS})]
    return _build(4, t, rows, ("Model", "Context Learner", "Init"), selection, rule, with_average=False)


def table5(trials: pd.DataFrame, selection: str = "val", rule: Selection | None = None) -> Table:
    """Paper Table 5: the prompt-tuning rows trained without the new last upsampling layer."""
    t = trials[trials["variant"] == VARIANTS[5]]
    pairs = list(TABLE5_ROWS) + _extra_pairs(t, TABLE5_ROWS)
    rows = [RowSpec((vlsm_name(v), _row_label(l)), v, l, VARIANTS[5], _in_average(l)) for v, l in pairs]
    return _build(5, t, rows, ("Model", "Context Learner"), selection, rule, with_average=True)


TABLE_BUILDERS = {3: table3, 4: table4, 5: table5}


def has_trials(trials: pd.DataFrame, number: int) -> bool:
    """Whether the run has any trial of the variant that table `number` is about."""
    return bool((trials["variant"] == VARIANTS[number]).any())


# ---------------------------------------------------------------------------------------------------------
# Table 2: the search space, from `benchmark.plan.search_space` (duck-typed Param records)


@dataclass
class Table2:
    number: int
    title: str
    params: tuple
    source: str = ""  # one sentence under the title: where these domains come from
    paper: tuple = ()  # the paper's params: a searched domain that differs from its namesake is marked

    def frame(self, tex: bool = False) -> pd.DataFrame:
        """Columns Hyperparameter, Search Space, Applicable for, Space Type; `tex` writes numbers as LaTeX math.
        A domain that differs from the paper's is marked with DIFFERS_MARK (see `differences`)."""
        rows = []
        differ = {id(p) for p, _ in self.differences()}
        for p in self.params:
            space = _domain(p, tex) + (f" {DIFFERS_MARK}" if id(p) in differ else "")
            name = PARAM_DISPLAY.get(p.name) or getattr(p, "label", "") or p.name
            rows.append({"Hyperparameter": name, "Search Space": space,
                         "Applicable for": _applies(p), "Space Type": _space_type(p)})
        return pd.DataFrame(rows, columns=["Hyperparameter", "Search Space", "Applicable for", "Space Type"])

    def differences(self) -> list[tuple[Any, Any]]:
        """(searched param, the paper's param of that name) for every domain that is not the paper's; a
        name the paper's Table 2 does not have is paired with None."""
        if not self.paper:
            return []
        out = []
        for p in self.params:
            theirs = [q for q in self.paper if q.name == p.name]
            if not any(_same_domain(p, q) for q in theirs):
                out.append((p, theirs[0] if theirs else None))
        return out


DIFFERS_MARK = "†"


def _domain(p: Any, tex: bool = False) -> str:
    choices = getattr(p, "choices", None)
    if choices:
        return "{" + ", ".join(_num(c, tex) for c in choices) + "}"
    return f"[{_num(p.low, tex)}, {_num(p.high, tex)}]"


def _same_domain(a: Any, b: Any) -> bool:
    ca, cb = getattr(a, "choices", None), getattr(b, "choices", None)
    if ca or cb:
        return list(ca or ()) == list(cb or ())
    return (math.isclose(float(a.low), float(b.low), rel_tol=1e-9) and
            math.isclose(float(a.high), float(b.high), rel_tol=1e-9) and
            bool(getattr(a, "log", False)) == bool(getattr(b, "log", False)))


PARAM_DISPLAY = {
    "lr": "Learning rate", "weight_decay": "Weight decay", "prompt_depth": "Prompt depth",
    "intermediate_dim": "Intermediate dimension", "use_lora": "Use LORA",
    "nhead": "Transformer: Number of Heads", "dropout": "Transformer: Dropout Probability",
    "dim_feedforward": "Transformer: Feed-Forward Dim", "norm_first": "Transformer: LayerNorm First",
    "shared_dim": "Shared Space Dimension",
}


def search_space_params(space: str = "paper") -> tuple:
    """The Param records of `space` (`benchmark.plan.search_space.SPACES`)."""
    try:
        return tuple(search_space.SPACES[space])
    except KeyError:
        raise ConfigError(f"unknown search space {space!r}; allowed: {', '.join(search_space.SPACES)}") from None


def _num(x: Any, tex: bool = False) -> str:
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, (int, np.integer)) or (isinstance(x, float) and x.is_integer() and abs(x) >= 1):
        return str(int(x))
    x = float(x)
    if x != 0 and abs(x) < 0.01:  # the paper writes 10^-5 and 5 x 10^-3, but 0.01 and 0.55 plainly
        exp = math.floor(math.log10(abs(x)))
        mant = round(x / 10 ** exp, 6)
        mant_s = f"{mant:g}"
        if tex:
            return (f"${mant_s}\\times10^{{{exp}}}$" if mant_s != "1" else f"$10^{{{exp}}}$")
        return f"{mant_s}e{exp}"
    return f"{x:g}"


def _space_type(p: Any) -> str:
    if getattr(p, "choices", None):
        return "Choice"
    if getattr(p, "log", False):
        return "Log"
    return "Integer" if str(p.kind).lower() in ("int", "integer") else "Linear"


def _paper_learners() -> set[str]:
    return {n for n in prompt_learners() if not _beyond_paper(n)}


def _applies(p: Any) -> str:
    """"ALL" when every prompt learner of the paper is searched over it (as the paper prints it; the learners
    beyond the paper that share the row are named in a footnote), else the learners by name, those beyond
    the paper marked."""
    learners = set(p.learners())
    paper = _paper_learners()
    if paper and paper <= learners:
        return "ALL"
    beyond = sorted(n for n in learners if _beyond_paper(n))
    return ", ".join([learner_name(n) for n in sorted(learners - set(beyond))] + [_row_label(n) for n in beyond])


def table2(params: Sequence[Any] | None = None, space: str = "paper", *, source: str = "",
           mark_vs_paper: bool = False) -> Table2:
    """Paper Table 2 from the search space (`params`, else `benchmark.plan.search_space`'s `space`), in its order.
    `mark_vs_paper`: mark every domain that differs from the paper's Table 2."""
    params = tuple(search_space_params(space=space) if params is None else params)
    paper = tuple(search_space_params(space="paper")) if mark_vs_paper else ()
    return Table2(2, TITLES[2], params, source, paper)


def searched_space(run: str | Path) -> tuple | None:
    """The domains a run actually searched (bounds applied), as recorded by the sweep in RUN/plan.json;
    None when RUN is not a run directory or its plan.json predates that record."""
    import json

    from benchmark.plan.search_space import Param
    from benchmark.results.run_dir import RunDir

    path = RunDir(run).plan_file
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); restore it from the run or delete it") from None
    space = state.get("space") if isinstance(state, dict) else None
    if not space:
        return None
    try:
        return tuple(Param(**{**d, "applies_to": tuple(d["applies_to"]),
                              **({"choices": tuple(d["choices"])} if "choices" in d else {})}) for d in space)
    except (TypeError, KeyError) as e:
        raise ConfigError(f"{path}: malformed 'space' record ({e}); rerun the spec on this run to rewrite it") \
            from None


# ---------------------------------------------------------------------------------------------------------
# The paper's numbers and the comparison


def load_paper(number: int, paper_dir: str | Path | None = None) -> pd.DataFrame:
    path = Path(paper_dir or PAPER_DIR) / f"table{number}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the paper's Table {number} is missing; it ships in results/paper/")
    return pd.read_csv(path, dtype={"vlsm": str, "learner": str, "init": str}, keep_default_na=False,
                       na_values=[""])


@dataclass
class Comparison:
    table: Table
    paper: pd.DataFrame  # percent, same index/columns as table.dice plus "mean", "std"; NaN = paper has none
    ours: pd.DataFrame
    paper_average: tuple[float, float] | None

    @property
    def common(self) -> list[Dataset]:
        """The table's datasets that the paper has a column for: the only cells a comparison can hold."""
        return [d for d in self.table.datasets if d.key in PAPER_KEYS]

    @property
    def not_comparable(self) -> str:
        """Why nothing at all is comparable (no dataset in common with the paper); "" when something is."""
        if self.common:
            return ""
        ours = ", ".join(d.key for d in self.table.datasets) or "none"
        return (f"Table {self.table.number} not compared with the paper: this run's datasets ({ours}) are none "
                f"of the paper's ten, so no cell and no mean is over the same data.")

    @property
    def partial(self) -> pd.Series:
        """Rows whose mean is not over exactly the datasets of the paper's mean (fewer of the paper's, or any
        other dataset): their mean/std are not comparable."""
        ours = np.isfinite(self.table.dice.to_numpy(dtype=float))
        theirs = np.isfinite(self.paper[[d.key for d in self.table.datasets]].to_numpy(dtype=float))
        in_paper = np.array([d.key in PAPER_KEYS for d in self.table.datasets], dtype=bool)
        full = ours[:, in_paper].all(axis=1) & ~ours[:, ~in_paper].any(axis=1)
        same = (ours == theirs).all(axis=1) | ~theirs.any(axis=1)  # rows the paper has no numbers for
        return pd.Series(~(full & same), index=self.table.dice.index)

    @property
    def average_comparable(self) -> bool:
        t = self.table
        rows = [i for i, r in enumerate(t.rows) if r.in_average]
        return bool(t.average and t.average[2] == len(rows) and not self.partial.iloc[rows].any())

    @property
    def diff(self) -> pd.DataFrame:
        """ours − paper between the printed (two-decimal) values; NaN where not comparable."""
        d = self.ours.map(rounded) - self.paper
        d.loc[self.partial.to_numpy(), ["mean", "std"]] = np.nan
        return d


def compare(table: Table, paper: pd.DataFrame | None = None) -> Comparison:
    """Our cells beside the paper's, matched by display labels (VLSM, learner[, init]) and dataset name."""
    paper = load_paper(table.number) if paper is None else paper
    label_cols = ["vlsm", "learner"] + (["init"] if "init" in paper.columns else [])
    lookup = {tuple(str(v) for v in r[label_cols]): r for _, r in paper.iterrows()}
    cols = [d.key for d in table.datasets] + ["mean", "std"]
    ours = table.dice.copy()
    ours["mean"], ours["std"] = table.mean, table.std
    theirs = pd.DataFrame(np.nan, index=ours.index, columns=cols)
    for i, r in enumerate(table.rows):
        p = lookup.get(tuple(r.labels[: len(label_cols)]))
        if p is None:
            continue
        for d in table.datasets:
            if d.display in p.index and pd.notna(p[d.display]):
                theirs.loc[i, d.key] = float(p[d.display])
        for c in ("mean", "std"):
            if c in p.index and pd.notna(p[c]):
                theirs.loc[i, c] = float(p[c])
    return Comparison(table, theirs, ours[cols], PAPER_AVERAGE.get(table.number))


# ---------------------------------------------------------------------------------------------------------
# Rendering: one neutral grid, then Markdown / LaTeX; CSV in the paper's own CSV layout


@dataclass
class Grid:
    title: str
    lines: list[str]  # sentences under the title (selection rule, notes)
    stub: list[str]
    groups: list[tuple[str, int]]  # (label, span) over the data columns; empty = no group row
    header: list[str]
    body: list[tuple[list[str], list[str]]]  # (stub cells, data cells)
    rule_before: set[int] = field(default_factory=set)
    footnotes: list[str] = field(default_factory=list)
    numeric: bool = True  # data columns right-aligned (numbers) or left-aligned (text, Table 2)


def _groups(datasets: Sequence[Dataset]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for d in datasets:
        if out and out[-1][0] == d.group:
            out[-1] = (d.group, out[-1][1] + 1)
        else:
            out.append((d.group, 1))
    return out


def _stub_cells(table: Table, i: int) -> list[str]:
    return list(table.rows[i].labels)


def _mean_cell(table: Table, i: int) -> str:
    if not math.isfinite(table.mean[i]):
        return DASH
    s = f"{fmt(table.mean[i])} ± {fmt(table.std[i])}"
    n, total = int(table.n_mean[i]), len(table.datasets)
    return s if n == total else f"{s} ({n}/{total})"


def _average_cell(table: Table) -> str:
    m, s, k = table.average
    if not k:
        return DASH
    full = sum(r.in_average for r in table.rows)
    partial = any(table.n_mean[i] < len(table.datasets) for i, r in enumerate(table.rows) if r.in_average
                  and math.isfinite(table.mean[i]))
    note = f" ({k}/{full} methods{', some partial' if partial else ''})" if k < full or partial else ""
    return f"{fmt(m)} ± {fmt(s)}{note}"


def _counts_note(table: Table) -> str:
    have = table.n_trials.to_numpy()[table.n_trials.to_numpy() > 0]
    if not len(have):
        return "No trials for this table yet."
    lo, hi = int(have.min()), int(have.max())
    n_cells = len(have)
    span = f"{lo}" if lo == hi else f"{lo}–{hi}"
    failed = int((table.n_trials - table.n_ok).to_numpy().sum())
    return (f"{n_cells} cell(s) run, {span} trial(s) each"
            + (f", {failed} trial(s) not finished ok (excluded from selection)" if failed else "")
            + "; per-cell counts in the trials table.")


def table_grid(table: Table) -> Grid:
    body = []
    for i in range(len(table.rows)):
        body.append((_stub_cells(table, i), [fmt(table.dice.loc[i, d.key]) for d in table.datasets]
                     + [_mean_cell(table, i)]))
    rule_before = set()
    if table.average is not None:
        rule_before.add(len(body))
        body.append((["Average across Methods"] + [""] * (len(table.stub) - 1),
                     [""] * len(table.datasets) + [_average_cell(table)]))
    lines = [table.header + ".", _counts_note(table)]
    foot = []
    if (table.n_mean < len(table.datasets)).any() and table.mean.notna().any():
        foot.append("(k/N) after a mean: over the k of N datasets that have a result.")
    if table.average is not None:
        foot.append("Average across Methods: mean ± population std of the prompt-tuning rows' means "
                    "(E2E excluded), as in the paper.")
    if any(r.learner == "e2e" for r in table.rows):
        foot.append(E2E_SOURCE_NOTE)
    if any(_beyond_paper(r.learner) for r in table.rows):
        foot.append(BEYOND_NOTE)
    foot.append(f"{DASH}: not run yet, or no trial finished.")
    return Grid(f"Table {table.number}. {table.title}", lines, list(table.stub), _groups(table.datasets)
                + [("Overall", 1)], [d.display for d in table.datasets] + ["Mean ± Std"], body, rule_before, foot)


def counts_grid(table: Table) -> Grid:
    """Trials per cell: "20" when all finished, "18/20" (finished/total) otherwise, "–" when none."""
    body = []
    for i in range(len(table.rows)):
        cells = []
        for d in table.datasets:
            n, ok = int(table.n_trials.loc[i, d.key]), int(table.n_ok.loc[i, d.key])
            cells.append(DASH if n == 0 else (str(n) if ok == n else f"{ok}/{n}"))
        body.append((_stub_cells(table, i), cells))
    return Grid(f"Table {table.number} (trials per cell).", ["Number of trials behind each cell; a/b = a of b "
                "trials finished ok."], list(table.stub), _groups(table.datasets),
                [d.display for d in table.datasets], body)


def comparison_grid(cmp: Comparison) -> Grid:
    table = cmp.table
    cols = [d.key for d in table.datasets]
    body = []

    diff = cmp.diff
    n_all = len(table.datasets)

    def cell(i, c):
        o, p = cmp.ours.loc[i, c], cmp.paper.loc[i, c]
        ours = fmt(o)
        if c in ("mean", "std") and pd.notna(o) and cmp.partial[i]:
            ours += f" ({int(table.n_mean[i])}/{n_all})"
        if pd.isna(p):
            return ours
        return f"{ours} / {fmt(p)}" + (f" ({fmt_signed(diff.loc[i, c])})" if pd.notna(diff.loc[i, c]) else "")

    for i in range(len(table.rows)):
        body.append((_stub_cells(table, i), [cell(i, c) for c in cols] + [cell(i, "mean"), cell(i, "std")]))
    rule_before = set()
    if table.average is not None:
        rule_before.add(len(body))
        m = table.average[0] if table.average[2] else math.nan
        s = table.average[1] if table.average[2] else math.nan
        pm, ps = cmp.paper_average or (math.nan, math.nan)

        ok = cmp.average_comparable

        def avg(o, p):
            ours = fmt(o) + ("" if ok or not math.isfinite(o) else " (partial)")
            return ours if math.isnan(p) else f"{ours} / {fmt(p)}" + (
                f" ({fmt_signed(rounded(o) - p)})" if ok else "")
        body.append((["Average across Methods"] + [""] * (len(table.stub) - 1),
                     [""] * len(cols) + [avg(m, pm), avg(s, ps)]))
    d = diff.to_numpy()[:, : len(cols)]
    d = d[np.isfinite(d)]
    summary = (f"{len(d)} cell(s) comparable; mean difference {fmt_signed(d.mean())}, mean |difference| "
               f"{fmt(np.abs(d).mean())} Dice points; ours higher in {(d > 0).sum()}." if len(d)
               else "No cell comparable with the paper yet.")
    return Grid(f"Table {table.number} vs paper. {table.title}",
                [table.header + ".", "Each cell: ours / paper (ours − paper); a mean over fewer datasets than "
                 "the paper's, marked (k/N), gets no difference.", summary], list(table.stub),
                _groups(table.datasets) + [("Overall", 2)],
                [x.display for x in table.datasets] + ["Mean", "Std"], body, rule_before)


def table2_grid(t: Table2, tex: bool = False) -> Grid:
    f = t.frame(tex)
    foot = []
    diffs = t.differences()
    if diffs:
        names = "; ".join(f"{PARAM_DISPLAY.get(p.name) or p.name}: {_domain(q, tex)}" if q is not None else
                          f"{PARAM_DISPLAY.get(p.name) or p.name}: not in the paper's Table 2" for p, q in diffs)
        foot.append(f"{DIFFERS_MARK} differs from the paper's Table 2 ({names}).")
    beyond = sorted({n for p in t.params for n in p.learners() if _beyond_paper(n)})
    if t.paper and not diffs:
        foot.append("Every domain of the paper's rows is the paper's." if beyond else "Every domain is the paper's.")
    if beyond:
        shared = [PARAM_DISPLAY.get(p.name) or p.label or p.name for p in t.params if _applies(p) == "ALL"
                  and set(beyond) & set(p.learners())]
        foot.append(f"{BEYOND_NOTE.split(';')[0]}. ALL: every prompt learner of the paper"
                    + (f"; {', '.join(_row_label(n) for n in beyond)} are searched over "
                       f"{', '.join(shared)} too" if shared else "")
                    + "; rows naming only them are not in the paper's Table 2.")
    return Grid(f"Table {t.number}. {t.title}", [t.source] if t.source else [], [f.columns[0]], [],
                list(f.columns[1:]), [([r[0]], list(r[1:])) for r in f.itertuples(index=False, name=None)],
                footnotes=foot, numeric=False)


def grid_md(g: Grid) -> str:
    out = [f"**{g.title}**", ""]
    out += [f"*{line}*" if i == 0 else line for i, line in enumerate(g.lines)]
    if g.lines:
        out.append("")
    ncols = len(g.stub) + len(g.header)
    out.append("| " + " | ".join(g.stub + g.header) + " |")
    out.append("|" + "|".join([":---"] * len(g.stub) + ["---:" if g.numeric else ":---"] * len(g.header)) + "|")
    if g.groups and len(g.groups) > 1:
        cells = [""] * (len(g.stub) - 1) + ["*Datasets →*"]
        for label, span in g.groups:
            cells += [f"*{label}*"] + [""] * (span - 1)
        out.append("| " + " | ".join(cells[:ncols]) + " |")
    for stub, data in g.body:
        out.append("| " + " | ".join([c.replace("|", "\\|") for c in stub + data]) + " |")
    if g.footnotes:
        out.append("")
        out += [f"- {f}" for f in g.footnotes]
    return "\n".join(out) + "\n"


_TEX_ESCAPES = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "±": r"$\pm$", "–": "--", "→": r"$\rightarrow$",
                "−": "-", "†": r"$^\dagger$", "{": r"\{", "}": r"\}"}


def _tex(s: str) -> str:
    # Segments between $...$ are already LaTeX math (Table 2 numbers); escape only the text around them.
    parts = s.split("$")
    return "$".join(p if i % 2 else "".join(_TEX_ESCAPES.get(ch, ch) for ch in p) for i, p in enumerate(parts))


def grid_tex(g: Grid) -> str:
    ns, nd = len(g.stub), len(g.header)
    out = ["\\begin{table}[t]", "\\centering", "\\small",
           f"\\caption{{{_tex(g.title)}{(' ' + _tex(' '.join(g.lines))) if g.lines else ''}}}",
           f"\\begin{{tabular}}{{{'l' * ns}{('r' if g.numeric else 'l') * nd}}}", "\\toprule"]
    if g.groups and len(g.groups) > 1:
        cells, rules, col = [""] * (ns - 1) + ["Datasets $\\rightarrow$"], [], ns + 1
        for label, span in g.groups:
            cells.append(f"\\multicolumn{{{span}}}{{c}}{{{_tex(label)}}}")
            rules.append(f"\\cmidrule(lr){{{col}-{col + span - 1}}}")
            col += span
        out.append(" & ".join(cells) + " \\\\")
        out.append(" ".join(rules))
    out.append(" & ".join(_tex(c) for c in g.stub + g.header) + " \\\\")
    out.append("\\midrule")
    prev: list[str] = []
    for i, (stub, data) in enumerate(g.body):
        if i in g.rule_before:
            out.append("\\midrule")
            prev = []
        # The paper prints a model name once per block; repeated leading stub cells are left blank.
        shown = [("" if j < len(prev) and prev[: j + 1] == stub[: j + 1] and j < ns - 1 else c)
                 for j, c in enumerate(stub)]
        prev = stub
        out.append(" & ".join([_tex(c) for c in shown] + [_tex(c) for c in data]) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    if g.footnotes:
        out = out[:-1] + [f"\\par\\smallskip{{\\footnotesize {_tex(' '.join(g.footnotes))}}}"] + out[-1:]
    return "\n".join(out) + "\n"


def _label_columns(table: Table) -> list[str]:
    return ["vlsm", "learner"] + (["init"] if "Init" in table.stub else [])


def table_csv(table: Table) -> str:
    """The paper's CSV layout (table, vlsm, learner[, init], datasets..., mean, std) plus the selection rule."""
    rows = []
    for i, r in enumerate(table.rows):
        row = {"table": table.number, **dict(zip(_label_columns(table), r.labels))}
        for d in table.datasets:
            row[d.display] = _csv_num(table.dice.loc[i, d.key])
        row["mean"], row["std"] = _csv_num(table.mean[i]), _csv_num(table.std[i])
        row["n_datasets"] = int(table.n_mean[i])
        rows.append(row)
    if table.average is not None:
        rows.append({"table": table.number, "vlsm": "", "learner": "Average across Methods",
                     "mean": _csv_num(table.average[0]), "std": _csv_num(table.average[1]),
                     "n_datasets": ""})
    cols = ["table"] + _label_columns(table) + [d.display for d in table.datasets] + ["mean", "std", "n_datasets"]
    df = pd.DataFrame(rows, columns=cols)
    df["selection"] = table.selection
    return df.to_csv(index=False, lineterminator="\n")


def _csv_num(x: Any) -> str:
    s = fmt(x)
    return "" if s == DASH else s


def counts_csv(table: Table) -> str:
    """Long format: one line per cell with its number of trials and of finished ones."""
    rows = []
    for i, r in enumerate(table.rows):
        for d in table.datasets:
            rows.append({"table": table.number, **dict(zip(_label_columns(table), r.labels)), "dataset": d.display,
                         "n_trials": int(table.n_trials.loc[i, d.key]), "n_ok": int(table.n_ok.loc[i, d.key])})
    return pd.DataFrame(rows).to_csv(index=False, lineterminator="\n")


def comparison_csv(cmp: Comparison) -> str:
    """Long format: table, labels, column, ours, paper, diff (percent, two decimals)."""
    t = cmp.table
    rows = []
    names = {d.key: d.display for d in t.datasets} | {"mean": "Mean", "std": "Std"}
    diff = cmp.diff
    for i, r in enumerate(t.rows):
        for c in cmp.ours.columns:
            o, p = cmp.ours.loc[i, c], cmp.paper.loc[i, c]
            rows.append({"table": t.number, **dict(zip(_label_columns(t), r.labels)), "column": names[c],
                         "ours": _csv_num(o), "paper": _csv_num(p), "diff": _csv_num(diff.loc[i, c])})
    if t.average is not None and cmp.paper_average and cmp.average_comparable:
        for c, o, p in (("Mean", t.average[0], cmp.paper_average[0]), ("Std", t.average[1], cmp.paper_average[1])):
            rows.append({"table": t.number, "vlsm": "", "learner": "Average across Methods", "column": c,
                         "ours": _csv_num(o), "paper": _csv_num(p), "diff": _csv_num(rounded(o) - p)})
    df = pd.DataFrame(rows)
    df["selection"] = t.selection
    return df.to_csv(index=False, lineterminator="\n")


FORMATS = ("md", "csv", "tex")


def render(obj: Table | Table2 | Comparison, fmt_: str = "md", counts: bool = False) -> str:
    """Render a table (or its trial counts with counts=True), Table 2, or a comparison, as md / csv / tex."""
    if fmt_ not in FORMATS:
        raise ValueError(f"unknown format {fmt_!r}; allowed: {', '.join(FORMATS)}")
    if isinstance(obj, Table2):
        if fmt_ == "csv":
            return obj.frame().to_csv(index=False, lineterminator="\n")
        return grid_md(table2_grid(obj)) if fmt_ == "md" else grid_tex(table2_grid(obj, tex=True))
    if isinstance(obj, Comparison):
        if obj.not_comparable:  # one line saying why, never a table of unlike numbers
            return {"md": f"*{obj.not_comparable}*\n", "tex": f"% {obj.not_comparable}\n",
                    "csv": f"# {obj.not_comparable}\n"}[fmt_]
        if fmt_ == "csv":
            return comparison_csv(obj)
        g = comparison_grid(obj)
    elif counts:
        if fmt_ == "csv":
            return counts_csv(obj)
        g = counts_grid(obj)
    else:
        if fmt_ == "csv":
            return table_csv(obj)
        g = table_grid(obj)
    return grid_md(g) if fmt_ == "md" else grid_tex(g)
