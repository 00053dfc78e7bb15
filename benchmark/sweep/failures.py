"""The one-line reason a Tune trial failed, for its Parquet row and its MLflow run alike."""

from __future__ import annotations

import re

_ERROR_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*)$")


def trial_error_text(trial) -> str:
    """A one-line reason for a failed trial: the message the trial reported, else the last exception
    line of Tune's error file."""
    reported = (trial.last_result or {}).get("error")
    if reported:
        return str(reported)
    text = ""
    try:
        text = trial.get_error() or ""
    except Exception:  # noqa: BLE001 - storage gone; fall through
        pass
    lines = [m.group(1) for line in text.splitlines() if (m := _ERROR_LINE.match(line))]
    return lines[-1] if lines else (text.strip().splitlines()[-1] if text.strip() else "trial failed (no error text)")
