"""Table 2, the search space: one row per searched domain, from the `Param` records of
`benchmark.plan.search_space` (or those a run recorded in its plan.json), each domain that differs from the
paper's marked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from benchmark.plan import search_space
from benchmark.results.tables.grid import Grid
from benchmark.results.tables.layout import BEYOND_NOTE, TITLES, beyond_paper, learner_name, row_label
from trainables.catalog import prompt_learners
from trainables.config import ConfigError
from trainables.hparams import Param


@dataclass
class Table2:
    number: int
    title: str
    params: tuple[Param, ...]  # in the paper's row order (`table2` sorts them)
    source: str = ""  # one sentence under the title: where these domains come from
    paper: tuple[Param, ...] = ()  # the paper's params: a searched domain that differs from its namesake is marked

    def frame(self, tex: bool = False) -> pd.DataFrame:
        """Columns Hyperparameter, Search Space, Applicable for, Space Type; `tex` writes numbers as LaTeX math.
        A domain that differs from the paper's is marked with DIFFERS_MARK (see `differences`)."""
        rows = []
        differ = {id(p) for p, _ in self.differences()}
        labels = _labels()
        for p in self.params:
            space = _domain(p, tex) + (f" {DIFFERS_MARK}" if id(p) in differ else "")
            rows.append({"Hyperparameter": _label(p, labels), "Search Space": space,
                         "Applicable for": _applies(p), "Space Type": _space_type(p)})
        return pd.DataFrame(rows, columns=["Hyperparameter", "Search Space", "Applicable for", "Space Type"])

    def differences(self) -> list[tuple[Param, Param | None]]:
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


def _labels() -> dict[str, str]:
    """Each hyperparameter's row label, from today's search-space records (`Param.label`, as the paper prints it;
    a learner's own rows as its folder declares them). A run's plan.json keeps the labels of the version that
    wrote it; the table shows today's, so that regenerated tables of old runs read alike."""
    labels: dict[str, str] = {}
    for p in search_space.PAPER:
        if p.label:
            labels.setdefault(p.name, p.label)
    return labels


def _label(p: Param, labels: dict[str, str]) -> str:
    return labels.get(p.name) or p.label or p.name


def _paper_order(params: Sequence[Param]) -> tuple[Param, ...]:
    """The rows in the paper's order: by the position of their name in the search space (shared rows, then the
    learners' own in catalog order, those beyond the paper last); several domains of one name keep their order."""
    order = {name: i for i, name in enumerate(search_space.HP_NAMES)}
    return tuple(sorted(params, key=lambda p: order.get(p.name, len(order))))


def _domain(p: Param, tex: bool = False) -> str:
    if p.kind == "categorical":
        return "{" + ", ".join(_num(c, tex) for c in p.choices or ()) + "}"
    return f"[{_num(p.low, tex)}, {_num(p.high, tex)}]"


def _same_domain(a: Param, b: Param) -> bool:
    if "categorical" in (a.kind, b.kind):
        return list(a.choices or ()) == list(b.choices or ())
    return (math.isclose(float(a.low), float(b.low), rel_tol=1e-9) and
            math.isclose(float(a.high), float(b.high), rel_tol=1e-9) and a.log == b.log)


def search_space_params(space: str = "paper") -> tuple[Param, ...]:
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


def _space_type(p: Param) -> str:
    if p.kind == "categorical":
        return "Choice"
    if p.log:
        return "Log"
    return "Integer" if p.kind == "int" else "Linear"


def _paper_learners() -> set[str]:
    return {n for n in prompt_learners() if not beyond_paper(n)}


def _applies(p: Param) -> str:
    """"ALL" when every prompt learner of the paper is searched over it (as the paper prints it; the learners
    beyond the paper that share the row are named in a footnote), else the learners by name, those beyond
    the paper marked."""
    learners = set(p.learners())
    paper = _paper_learners()
    if paper and paper <= learners:
        return "ALL"
    beyond = sorted(n for n in learners if beyond_paper(n))
    return ", ".join([learner_name(n) for n in sorted(learners - set(beyond))] + [row_label(n) for n in beyond])


def table2(params: Sequence[Param] | None = None, space: str = "paper", *, source: str = "",
           mark_vs_paper: bool = False) -> Table2:
    """Paper Table 2 from the search-space records (`params`, else `benchmark.plan.search_space`'s `space`), in
    the paper's row order. `mark_vs_paper`: mark every domain that differs from the paper's Table 2."""
    params = _paper_order(search_space_params(space=space) if params is None else params)
    paper = tuple(search_space_params(space="paper")) if mark_vs_paper else ()
    return Table2(2, TITLES[2], params, source, paper)


def searched_space(run: str | Path) -> tuple[Param, ...] | None:
    """The domains a run actually searched (bounds applied), as recorded by the sweep in RUN/plan.json;
    None when RUN is not a run directory or its plan.json predates that record."""
    import json

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


def table2_grid(t: Table2, tex: bool = False) -> Grid:
    f = t.frame(tex)
    foot = []
    diffs = t.differences()
    labels = _labels()
    if diffs:
        names = "; ".join(f"{_label(p, labels)}: {_domain(q, tex)}" if q is not None else
                          f"{_label(p, labels)}: not in the paper's Table 2" for p, q in diffs)
        foot.append(f"{DIFFERS_MARK} differs from the paper's Table 2 ({names}).")
    beyond = sorted({n for p in t.params for n in p.learners() if beyond_paper(n)})
    if t.paper and not diffs:
        foot.append("Every domain of the paper's rows is the paper's." if beyond else "Every domain is the paper's.")
    if beyond:
        shared = [_label(p, labels) for p in t.params if _applies(p) == "ALL"
                  and set(beyond) & set(p.learners())]
        foot.append(f"{BEYOND_NOTE.split(';')[0]}. ALL: every prompt learner of the paper"
                    + (f"; {', '.join(row_label(n) for n in beyond)} are searched over "
                       f"{', '.join(shared)} too" if shared else "")
                    + "; rows naming only them are not in the paper's Table 2.")
    return Grid(f"Table {t.number}. {t.title}", [t.source] if t.source else [], [f.columns[0]], [],
                list(f.columns[1:]), [([r[0]], list(r[1:])) for r in f.itertuples(index=False, name=None)],
                footnotes=foot, numeric=False)
