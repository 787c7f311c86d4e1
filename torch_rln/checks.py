"""Checks of a wrapper's settings: every error names the bad value and what was expected.

Public: a new regularizer validates its settings with these (see ``RegularizedOptimizer.validate_group``).

Settings are stored as plain Python numbers (checkpoints then load with
``torch.load(weights_only=True)``); NumPy numbers are accepted and converted.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_finite", "check_flag", "check_int", "check_magnitude", "shown"]


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a 400-digit integer stays readable)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 12]}...{text[-8:]}"


def check_finite(name: str, value: Any) -> float:
    """``value`` as a Python float, or ``ValueError`` naming it if it is not a finite real
    number (Python and NumPy numbers are accepted; bools and tensors are not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Invalid {name}: {shown(value)} (expected a finite number)")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"Invalid {name}: {shown(value)} (expected a finite number)")
    return number


def check_int(name: str, value: Any, allowed: str) -> int:
    """``value`` as a Python int, or ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"Invalid {name}: {shown(value)} (expected {allowed})")
    return int(value)


def check_flag(name: str, value: Any) -> bool | None:
    """``value`` if it is True, False or None; otherwise ``TypeError`` naming it."""
    if value is None or isinstance(value, bool):
        return value
    raise TypeError(f"Invalid {name}: {shown(value)} (expected True, False or None)")


def check_magnitude(name: str, value: float, limit: float, why: str) -> None:
    """``ValueError`` naming ``value`` if ``|value| > limit``; ``why`` says what the limit holds."""
    if abs(value) > limit:
        raise ValueError(f"Invalid {name}: {shown(value)} (expected at most {limit:.3g} in magnitude: {why})")
