"""Numbers from outside (DAG params, templated operator arguments) checked where they are used.

A DAG param's schema refuses what its DAG cannot use, but a number can still arrive another way
(an operator's templated field, a library call), and NaN compares false with every bound: a
`budget_seconds` of NaN never runs out (`elapsed >= nan` is never true), a window of infinite
hours overflows `timedelta`. `bounded` refuses both, and anything outside [low, high], naming
the value.
"""

from __future__ import annotations

import math
from typing import Any


class OutOfBounds(ValueError):
    """A number that is not finite, not a number, or outside its bounds."""


def bounded(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    integer: bool = False,
) -> Any:
    """`value` (an int when `integer`, else a float) if it is a finite number within
    [`low`, `high`] (`low` excluded with `low_open`); else OutOfBounds naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OutOfBounds(f"{name} must be a number, got {value!r:.80}")
    if not math.isfinite(value):
        raise OutOfBounds(f"{name} must be finite, got {value!r}")
    if integer and value != int(value):
        raise OutOfBounds(f"{name} must be a whole number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise OutOfBounds(f"{name} must be {'above' if low_open else 'at least'} {low:g}, got {value!r}")
    if high is not None and value > high:
        raise OutOfBounds(f"{name} must be at most {high:g}, got {value!r}")
    return int(value) if integer else float(value)
