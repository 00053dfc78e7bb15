"""The shared table renderer: one neutral `Grid` (title, sentences, stub and data columns, body, footnotes),
written as Markdown (`grid_md`) or LaTeX (`grid_tex`). Knows nothing of trials or datasets; every table of
the results (Tables 2-5, counts, seeds, the comparison, budget, importance) is a Grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    align: str = ""  # one "l" or "r" per data column where a table mixes text and numbers; overrides `numeric`

    def data_align(self) -> list[str]:
        return list(self.align) if self.align else ["r" if self.numeric else "l"] * len(self.header)


def grid_md(g: Grid) -> str:
    """Markdown: the bold title (none when empty: a table inside a report section), the sentences, the table."""
    out = [f"**{g.title}**", ""] if g.title else []
    out += [f"*{line}*" if i == 0 else line for i, line in enumerate(g.lines)]
    if g.lines:
        out.append("")
    ncols = len(g.stub) + len(g.header)
    out.append("| " + " | ".join(g.stub + g.header) + " |")
    out.append("|" + "|".join([":---"] * len(g.stub) + [{"l": ":---", "r": "---:"}[a] for a in g.data_align()]) + "|")
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
    ns = len(g.stub)
    out = ["\\begin{table}[t]", "\\centering", "\\small",
           f"\\caption{{{_tex(g.title)}{(' ' + _tex(' '.join(g.lines))) if g.lines else ''}}}",
           f"\\begin{{tabular}}{{{'l' * ns}{''.join(g.data_align())}}}", "\\toprule"]
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
