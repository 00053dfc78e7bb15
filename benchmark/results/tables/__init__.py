"""The paper's Tables 2–5 as pure functions of the trial Parquet, with Markdown / CSV / LaTeX renderers.

Everything here is pandas on one-row-per-trial frames (the `records.TRIAL_SCHEMA` of `<run>/trials/*.parquet`):
no torch, no Ray, so tables regenerate on a laptop from the Parquet alone. One module per job:

- `layout`: the paper's datasets and groups, row orders, variants, titles, display names, the beyond-paper mark;
- `trials`: reading and checking a run's trial rows;
- `numbers`: half-up two-decimal formatting;
- `dice`: Tables 3–5 (test Dice per cell, row means, "Average across Methods");
  `dice_render`: those as grids and in the paper's CSV layout;
- `table2`: Table 2, the search space, from the `Param` records;
- `vs_paper`: Tables 3–5 beside the paper's numbers;
- `grid`: the neutral grid and its Markdown / LaTeX writers, shared by every table of the results;
- `render`: any of them as md / csv / tex.

Conventions, all taken from the paper and checked against its numbers (tests/benchmark/results/test_tables.py):
- Dice in percent, two decimals, rounded half-up (`numbers`).
- "Mean ± Std" of a row: over its datasets, population std; "Average across Methods": over the prompt-tuning
  rows' means, E2E excluded (`dice`).
- Row and column order as printed in the paper; display names mapped once (`layout`).
- A cell that has no selected trial shows "–"; every table carries per-cell trial counts.

The names below are this package's interface (`from benchmark.results import tables as T; T.table3(...)`).
"""

from benchmark.results.tables.dice import TABLE_BUILDERS, RowSpec, Table, has_trials, table3, table4, table5
from benchmark.results.tables.dice_render import counts_csv, counts_grid, table_csv, table_grid
from benchmark.results.tables.grid import Grid, grid_md, grid_tex
from benchmark.results.tables.layout import (
                                             BEYOND_MARK,
                                             BEYOND_NOTE,
                                             DATASETS,
                                             E2E_SOURCE_NOTE,
                                             INIT_LABELS,
                                             OTHER_GROUP,
                                             PAPER_KEYS,
                                             TABLE3_ROWS,
                                             TABLE5_ROWS,
                                             TITLES,
                                             VARIANTS,
                                             Dataset,
                                             learner_name,
                                             row_label,
                                             vlsm_name,
)
from benchmark.results.tables.numbers import DASH, fmt, fmt_signed, rounded
from benchmark.results.tables.render import FORMATS, render
from benchmark.results.tables.table2 import (
                                             DIFFERS_MARK,
                                                                                      Table2,
                                             search_space_params,
                                             searched_space,
                                             table2,
                                             table2_grid,
)
from benchmark.results.tables.trials import REQUIRED_COLUMNS, SchemaError, check_trials, read_trials, supported_schema_versions
from benchmark.results.tables.vs_paper import (
                                             PAPER_AVERAGE,
                                             PAPER_DIR,
                                             Comparison,
                                             compare,
                                             comparison_csv,
                                             comparison_grid,
                                             load_paper,
)

__all__ = [
    "BEYOND_MARK", "BEYOND_NOTE", "DASH", "DATASETS", "DIFFERS_MARK", "E2E_SOURCE_NOTE", "FORMATS", "INIT_LABELS",
    "OTHER_GROUP", "PAPER_AVERAGE", "PAPER_DIR", "PAPER_KEYS", "REQUIRED_COLUMNS", "TABLE3_ROWS",
    "TABLE5_ROWS", "TABLE_BUILDERS", "TITLES", "VARIANTS", "Comparison", "Dataset", "Grid", "RowSpec",
    "SchemaError", "Table", "Table2", "check_trials", "compare", "comparison_csv", "comparison_grid",
    "counts_csv", "counts_grid", "fmt", "fmt_signed", "grid_md", "grid_tex", "has_trials", "learner_name",
    "load_paper", "read_trials", "render", "rounded", "row_label", "search_space_params", "searched_space",
    "supported_schema_versions", "table2", "table2_grid", "table3", "table4", "table5", "table_csv", "table_grid",
    "vlsm_name",
]
