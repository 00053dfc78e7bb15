"""The sweep's terminal lines: the estimated time left, elapsed time, numbers and sizes as printed.

The time left comes from what this driver has seen: the mean duration of the trials it saw finish, the
trials left and how many ran at once (the most trials seen RUNNING together). Cells differ in cost (E2E vs
prompt tuning, datasets of other sizes), so it is said as an estimate, and nothing is said before a trial
has finished.
"""

from __future__ import annotations

import math
from typing import Any


def say(line: str) -> None:
    print(line, flush=True)


def hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else "-"


def eta_seconds(durations: list[float], left: int, slots: int) -> float | None:
    """Seconds until `left` more trials are done on `slots` parallel slots, None without a finished trial."""
    done = [d for d in durations if isinstance(d, (int, float)) and math.isfinite(d) and d >= 0]
    if not done:
        return None
    if left <= 0:
        return 0.0
    return sum(done) / len(done) * left / max(1, min(slots, left))


def eta_text(durations: list[float], left: int, slots: int) -> str:
    """`~0:12:40 left (estimate)`, or "" when there is nothing to estimate from (or nothing left)."""
    eta = eta_seconds(durations, left, slots)
    if eta is None or left <= 0:
        return ""
    s = int(round(eta))
    return f"~{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d} left (estimate)"


def disk_usage(path) -> int:
    """Bytes of the files under `path` (what `du --apparent-size` counts; links not followed)."""
    import os

    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed while walking (a checkpoint Tune deleted)
                pass
    return total


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
