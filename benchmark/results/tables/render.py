"""`render`: any table of the paper (Tables 3-5 or their trial counts, Table 2, a comparison) as md / csv / tex."""

from __future__ import annotations

from benchmark.results.tables.dice import Table
from benchmark.results.tables.dice_render import counts_csv, counts_grid, table_csv, table_grid
from benchmark.results.tables.grid import grid_md, grid_tex
from benchmark.results.tables.table2 import Table2, table2_grid
from benchmark.results.tables.vs_paper import Comparison, comparison_csv, comparison_grid

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
