"""What a sweep ends with: its `SweepResult` (counts, per-cell selected trial, exit code) and the table it
prints (one line per cell: trials, failures, the selected trial and its scores)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.plan.matrix import Plan
from benchmark.plan.spec import Spec
from benchmark.results.run_dir import select
from benchmark.sweep import reseed
from benchmark.sweep.progress import disk_usage, fmt, human_bytes, say
from trainables.protocol import STATUS_ERROR


@dataclass
class SweepResult:
    run_dir: Path
    planned: int
    done: int = 0  # trials with a Parquet row
    failed: int = 0  # rows with status "error"
    interrupted: bool = False
    stalled: bool = False  # Tune had nothing left to run, yet the plan is not complete (see coordinator._sweep)
    terminated: bool = False  # stopped by SIGTERM (state saved, resumable)
    noop: bool = False
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.terminated:
            return 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended
        if self.interrupted:
            return 130
        return 1 if self.failed or self.stalled else 0


def summarise(result: SweepResult, plan: Plan, rows: dict[str, dict[str, dict]], spec: Spec) -> None:
    result.done = result.failed = 0
    for c in plan.cells:
        cell_rows = list(rows.get(c.id, {}).values())
        failed = sum(r["status"] == STATUS_ERROR for r in cell_rows)
        best = select(cell_rows, spec.select)
        result.cells[c.id] = {"planned": reseed.expected(c, cell_rows, spec.select), "done": len(cell_rows),
                              "failed": failed, "best": best}
        result.done += len(cell_rows)
        result.failed += failed
    result.planned = sum(info["planned"] for info in result.cells.values())  # no reseeds without a selection


def print_summary(result: SweepResult, spec: Spec) -> None:
    by, report = spec.select.by, spec.select.report
    width = max((len(c) for c in result.cells), default=10)
    say("")
    say(f"{'cell':<{width}}  trials  failed  selected  {by:>10}  {report:>10}")
    for cid, info in result.cells.items():
        best = info["best"]
        sel = f"#{best['trial_index']}" if best else "-"
        val = fmt(best.get(by)) if best else "-"
        rep = fmt(best.get(report)) if best else "-"
        trials = f"{info['done']:>3}/{info['planned']:<3}"
        say(f"{cid:<{width}}  {trials} {info['failed']:>6}  {sel:>8}  {val:>10}  {rep:>10}")
    say(f"{result.done}/{result.planned} trials recorded, {result.failed} failed -> {result.run_dir} "
        f"({human_bytes(disk_usage(result.run_dir))} on disk)")
