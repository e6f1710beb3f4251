"""Checking one value: the small rules every setting and config field is held to.

Each function returns the value in its plain Python form (``int``, ``float``, ``bool``) or raises a
``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, outside the allowed range) whose message
names the parameter, the bad value and what is allowed. NaN and infinity are never allowed; ``True`` is not a
number here (``cfg_text_scale=True`` is refused, not read as 1).
"""

from __future__ import annotations

import math
import numbers


def _show(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    """An integer in ``[lo, hi]`` (no upper bound when ``hi`` is None)."""
    allowed = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {allowed}, got {_show(value)}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def check_float(name: str, value, lo: float, hi: float, hint: str = "") -> float:
    """A finite number in ``[lo, hi]``; ``hint`` is added to the message (what the value means)."""
    allowed = f"a finite number in [{lo}, {hi}]{hint}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {allowed}, got {_show(value)}")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {_show(value)}")
    return value


def check_choice(name: str, value, choices: tuple) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} {value!r} is unknown; use one of {choices}")
    return value
