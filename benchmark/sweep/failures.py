"""Failures in one line: why a Tune trial failed (for its Parquet row and its MLflow run alike), and why the
sweep stopped when its run directory stopped taking writes (with the way back)."""

from __future__ import annotations

import errno
import re
from typing import Callable

from trainables.config import ConfigError

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


def find_cause(error: BaseException, kind: type) -> BaseException | None:
    """`error` or the first of its causes/contexts that is a `kind` (Tune may wrap a callback's error)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def storage_errors_in_one_line(hint: str, fn: Callable, *args, **kwargs):
    """A run directory that fills up, turns read-only or unwritable mid-sweep (wherever the write was: a
    Parquet row, a Tune snapshot, a checkpoint, even wrapped by Tune) ends in one line with the way back.
    Every finished trial is in Parquet already; the rerun resumes."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - only storage errors are rephrased, the rest re-raised
        cause = find_cause(e, OSError)
        if cause is None or cause.errno not in _STORAGE_ERRNOS:
            raise
        where = f" ({cause.filename})" if cause.filename else ""
        fix = ("free space there" if cause.errno in (errno.ENOSPC, errno.EDQUOT) else
               "make it writable again (permissions, a read-only remount)" if cause.errno != errno.EIO else
               "check that disk")
        raise ConfigError(f"the run directory stopped taking writes: {cause.strerror or cause}{where}; {fix}, then "
                          f"resume with: {hint} (finished trials are kept)") from None
