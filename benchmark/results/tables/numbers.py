"""Number formatting of every table: Dice in percent, two decimals, rounded half-up.

The paper's CoCoOp and CoOp means (65.33, 62.91) are exact halves of their cells (65.325, 62.905): half-up
reproduces them, Python's float rounding does not.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pandas as pd

DASH = "–"


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
